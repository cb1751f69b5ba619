#pragma once
// Token dispatch for an MoE layer: each token to the rows of the experts routing chose for it
// (dispatch), and the experts' output rows back into their tokens, weighted (combine), with
// both backward passes. The local dispatcher moves rows within this process's memory with the
// backend's ops. The expert-parallel one (core/moe/expert_parallel_dispatcher.h: experts
// spread over ranks) implements the same calls with an all_to_all: dispatch sends each routed
// row to the rank that owns its expert, combine brings the outputs back; the layer stays as
// it is.
//
// Shapes: N tokens (B·T) of C channels, E experts, S slots per token (topk: S = K; expert
// choice: S = E), and the rows of a routing decision r (MoeRouting, core/backend.h), grouped
// by expert: r.rows() = E·P in the padded layout (P rows per expert) or N·K in the compact
// one. Every pointer is memory of the dispatcher's backend.
//
// The "expert rows" below are the rows this process's experts compute on, as plan() lays
// them out: for the local dispatcher r's own rows (all E experts, r.groups()); for an
// expert-parallel one the rows every rank routed to this rank's experts.
#include "core/backend.h"

namespace upcycle {

// The experts this process computes and the rows they compute on.
struct ExpertShard {
    int first_expert = 0;  // the experts are [first_expert, first_expert + groups.E)
    ExpertGroups groups;   // their rows, grouped by expert (device offsets and counts)
};

class TokenDispatcher {
public:
    virtual ~TokenDispatcher() = default;

    // Called once per forward, after routing and before dispatch: which experts this process
    // computes for the decision r and where their rows lie. Valid until the next plan(); the
    // four calls below use it. An expert-parallel dispatcher exchanges the row counts here (a
    // collective: every rank plans every forward). This one keeps r's rows: all experts.
    virtual ExpertShard plan(const MoeRouting& r) { return {0, r.groups()}; }

    // rows[expert rows,C] (overwrites): each routed copy of a token x[N,C] at its expert row;
    // zeros on padding rows (the experts multiply whole padded blocks).
    virtual void dispatch(float* rows, const float* x, const MoeRouting& r, int C) = 0;
    // dx[N,C] += Σ over token n's kept slots s (slot order) of the gradient of its expert row
    // in drows[expert rows,C].
    virtual void dispatch_backward(float* dx, const float* drows, const MoeRouting& r, int C) = 0;
    // out[N,C] (overwrites): out[n,:] = Σ over n's kept slots s (slot order) of
    // r.slot_weight[n,s]·(the expert row carrying (n,s)) from rows[expert rows,C]; zeros for a
    // token with no kept slot.
    virtual void combine(float* out, const float* rows, const MoeRouting& r, int C) = 0;
    // For each kept slot (n,s), its expert row i: drows[i,:] += r.slot_weight[n,s]·dout[n,:]
    // and dslot_weight[n,s] += dout[n,:]·rows[i,:], from dout[N,C] and the forward's expert
    // output rows; drows is [expert rows,C], dslot_weight [N,S]. (A dispatcher that moved the
    // forward's rows back to the tokens' ranks may read its own copy of them instead.)
    virtual void combine_backward(float* drows, float* dslot_weight, const float* dout,
                                  const float* rows, const MoeRouting& r, int C) = 0;
};

// One process holds every expert, and the expert rows are r's rows: the backend's
// gather_rows and combine_rows, and their backward passes.
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
