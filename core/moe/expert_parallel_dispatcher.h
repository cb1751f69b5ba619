#pragma once
// Expert parallelism: the E experts of every MoE layer spread over the M ranks of a
// communicator (rank m computes experts [m·E/M, (m+1)·E/M); E divisible by M), the router
// replicated. Every rank is also a data-parallel rank with its own tokens.
//
// Each rank routes its own N tokens exactly as the 1-rank layer would route them (capacity
// per rank's tokens, as GShard's local groups): expert parallelism changes where experts run,
// never which tokens are kept. Per forward the ranks exchange their kept rows per expert
// (plan(): one small host all-gather of E counts per rank, from which both sides of every
// all_to_all_v are known), then
//   dispatch:  gather the tokens into r's rows → send each expert's rows to its rank
//              (all_to_all_v) → the owner lays what it received out by expert;
//   combine:   the experts' output rows travel back the same way and are combined where their
//              tokens live, which keeps them for combine_backward;
//   combine_backward: dslot_weight (dout·row) and the row gradients (weight·dout) are made
//              where the tokens live; the row gradients travel to the experts' ranks;
//   dispatch_backward: the experts' input gradients travel back and are summed into dx.
//
// Row orders (N tokens, C channels, E experts, M ranks, El = E/M experts per rank):
//   routing order: r's rows (padded E·P or compact N·K, core/backend.h);
//   send order:    the kept routing rows by expert (so by destination rank, each rank's
//                  experts being one range), within an expert in token order;
//   receive order: by source rank, within a source by expert;
//   expert order:  by local expert, within one by source rank (then the source's token
//                  order): compact groups of El experts, what the experts compute on.
//
// Parameters: every rank keeps the model's whole flat parameter buffer (layout and names as a
// 1-rank run, so checkpoints are world-size-free) and computes only its own experts; the
// gradients of experts it does not own stay zero on it. With rank j's loss L_j the mean over
// its own tokens (+ its auxiliary losses) and the job's loss L = (1/M)·Σ_j L_j, the owner of
// expert e accumulates Σ_j ∂L_j/∂θ_e (the row gradients of every rank's tokens reach it) and
// every other rank 0, so the data-parallel average over ranks (all_reduce_gradients) gives
// every rank (1/M)·Σ_j ∂L_j/∂θ_e = ∂L/∂θ_e, the same as for the replicated parameters, whose
// rank-local ∂L_j/∂θ average to ∂L/∂θ. Every rank then applies the identical update: the
// replicas stay equal and rank 0's checkpoint is complete. This saves the experts' compute and
// activations, not parameter or optimizer memory (each rank still holds all E experts and
// their moments); saving that would need each rank to hold only its experts' slice of the
// buffer (a layout with per-rank shards, gathered for checkpoints, and an optimizer and
// gradient norm over shards), which this does not do.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/moe/token_dispatcher.h"
#include "core/tensor.h"

namespace upcycle {

// Throws UserError (file = source, key model.moe.experts) unless `ranks` divides `experts`.
void check_expert_parallel_split(int experts, int ranks, const std::string& source = "");

// Copies rows [from, from + rows) of one buffer to rows [to, to + rows) of another.
struct RowBlock {
    int64_t from = 0;
    int64_t to = 0;
    int64_t rows = 0;
    bool operator==(const RowBlock&) const = default;
};

// Where one rank's rows go in an expert-parallel step: a function of every rank's kept rows
// per expert, the same on every rank but for `rank`'s own part.
struct ExpertParallelPlan {
    int first_expert = 0;   // this rank's experts are [first_expert, first_expert + local_experts)
    int local_experts = 0;  // El
    std::vector<int64_t> send_rows;      // [M] rows this rank sends to each rank
    std::vector<int64_t> receive_rows;   // [M] rows each rank sends to this one
    std::vector<RowBlock> pack;          // routing order → send order (coalesced)
    std::vector<RowBlock> to_experts;    // receive order → expert order (coalesced)
    std::vector<int32_t> expert_offset;  // [El+1] first row of each local expert (expert order)
    std::vector<int32_t> expert_count;   // [El] rows of each local expert, from all ranks
    int64_t sent() const;
    int64_t received() const;
};

// counts[j·E + e]: rank j's kept rows for expert e (E = counts.size() / ranks);
// rows_per_expert: the routing layout's P (0: compact).
ExpertParallelPlan plan_expert_parallel(std::span<const int64_t> counts, int ranks, int rank,
                                        int rows_per_expert);

class ExpertParallelDispatcher final : public TokenDispatcher {
public:
    // The experts of a layer spread over every rank of `ranks` (whose collectives move
    // memory of `backend`). Throws UserError (key model.moe.experts) unless E divides evenly.
    ExpertParallelDispatcher(Backend& backend, Communicator& ranks, int experts);

    // Exchanges the kept rows per expert with every rank (a collective).
    ExpertShard plan(const MoeRouting& r) override;
    void dispatch(float* rows, const float* x, const MoeRouting& r, int C) override;
    void dispatch_backward(float* dx, const float* drows, const MoeRouting& r, int C) override;
    void combine(float* out, const float* rows, const MoeRouting& r, int C) override;
    // Reads the expert outputs combine() brought back, not `rows` (the experts' side).
    void combine_backward(float* drows, float* dslot_weight, const float* dout, const float* rows,
                          const MoeRouting& r, int C) override;

    // The last plan() (tests, inspection).
    const ExpertParallelPlan& last_plan() const { return plan_; }

private:
    // send_staging_ → receive_staging_ (toward the experts) or back (toward the tokens).
    void exchange(bool toward_experts, int C);
    // t holds at least rows × C floats (the buffers grow to the most rows seen).
    void reserve(Tensor& t, int64_t rows, int C);
    void reserve_buffers(const MoeRouting& r, int C);

    Backend* backend_;
    Communicator* ranks_;
    int experts_;
    ExpertParallelPlan plan_;
    Tensor expert_offset_, expert_count_;  // int32 [El+1], [El]: plan_'s, on the device
    // [r.rows(),C] in routing order: the gathered tokens, then the expert outputs combine()
    // brought back (read again by combine_backward)
    Tensor token_rows_;
    // [r.rows(),C] in routing order: combine_backward's row gradients, then the input
    // gradients dispatch_backward brought back
    Tensor token_row_gradients_;
    Tensor send_staging_;     // [sent rows, C] send order
    Tensor receive_staging_;  // [received rows, C] receive order
};

// The dispatcher of an MoE layer with `experts` experts: spread over `expert_parallel`'s
// ranks, or local when it is null or has one rank.
std::unique_ptr<TokenDispatcher> make_token_dispatcher(Backend& backend,
                                                       Communicator* expert_parallel, int experts);

}  // namespace upcycle
