#pragma once
// Token dispatch for an MoE layer: each token to the rows of the experts routing chose for it
// (dispatch), and the experts' output rows back into their tokens, weighted (combine), with
// both backward passes. The local dispatcher moves rows within this process's memory with the
// backend's ops. An expert-parallel one (experts spread over ranks) implements the same four
// calls with an all_to_all: dispatch sends each routed row to the rank that owns its expert,
// combine brings the outputs back; the layer stays as it is.
//
// Shapes: N tokens (B·T) of C channels, E experts, S slots per token (topk: S = K; expert
// choice: S = E), and the rows of a routing decision r (MoeRouting, core/backend.h), grouped
// by expert: r.rows() = E·P in the padded layout (P rows per expert) or N·K in the compact
// one. Every pointer is memory of the dispatcher's backend.
#include "core/backend.h"

namespace upcycle {

class TokenDispatcher {
public:
    virtual ~TokenDispatcher() = default;

    // rows[r.rows(),C] (overwrites): rows[row,:] = x[r.row_token[row],:] from x[N,C]; zeros on
    // padding rows (the experts multiply whole padded blocks).
    virtual void dispatch(float* rows, const float* x, const MoeRouting& r, int C) = 0;
    // dx[N,C] += Σ over token n's kept slots s (slot order) of drows[r.slot_row[n,s],:].
    virtual void dispatch_backward(float* dx, const float* drows, const MoeRouting& r, int C) = 0;
    // out[N,C] (overwrites): out[n,:] = Σ over n's kept slots s (slot order) of
    // r.slot_weight[n,s]·rows[r.slot_row[n,s],:]; zeros for a token with no kept slot.
    virtual void combine(float* out, const float* rows, const MoeRouting& r, int C) = 0;
    // For each kept slot (n,s) of row = r.slot_row[n,s]: drows[row,:] += r.slot_weight[n,s]·
    // dout[n,:] and dslot_weight[n,s] += dout[n,:]·rows[row,:], from dout[N,C] and the
    // forward's rows[r.rows(),C]; drows is [r.rows(),C], dslot_weight [N,S].
    virtual void combine_backward(float* drows, float* dslot_weight, const float* dout,
                                  const float* rows, const MoeRouting& r, int C) = 0;
};

// One process holds every expert: the backend's gather_rows and combine_rows, and their
// backward passes.
class LocalTokenDispatcher final : public TokenDispatcher {
public:
    explicit LocalTokenDispatcher(Backend& backend) : backend_(&backend) {}

    void dispatch(float* rows, const float* x, const MoeRouting& r, int C) override;
    void dispatch_backward(float* dx, const float* drows, const MoeRouting& r, int C) override;
    void combine(float* out, const float* rows, const MoeRouting& r, int C) override;
    void combine_backward(float* drows, float* dslot_weight, const float* dout, const float* rows,
                          const MoeRouting& r, int C) override;

private:
    Backend* backend_;
};

}  // namespace upcycle
