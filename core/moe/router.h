#pragma once
// The router: decides which expert sees which token, and with what combine weight.
// Runs on the host over the [N,E] router logits (small: N tokens × E experts); the heavy
// parts of the MoE layer (dispatch, expert MLPs, combine) run on the backend.
//
// topk (token choice): every token picks its k most probable experts (ties: lower expert
//   index). Capacity per expert = ceil(k·N·cf/E) (cf ≤ 0: no limit). Assignments claim slots
//   rank by rank — every token's first choice before any second choice — and within a rank
//   in token order (`token_order`) or by descending router probability (`probability`,
//   batch-prioritized routing); an assignment that finds its expert full is dropped (its
//   output for that expert is zero; the residual stream carries the token).
// expert_choice: every expert takes its ceil(N·cf/E) most probable tokens (cf ≤ 0: all N;
//   ties: lower token index); a token may get 0..E experts. Never used in a causal model.
// Combine weights: softmax_topk = the softmax probability of the chosen expert (the paper's);
//   renormalized = divided by the sum over the token's selected experts (top-k for topk,
//   the experts that chose it for expert_choice), so that identical experts reproduce the
//   dense MLP exactly.
#include <cstdint>
#include <vector>

#include "core/config.h"

namespace upcycle {

// One (token, expert) pair that survived routing.
struct Assignment {
    int32_t token = 0;
    int32_t expert = 0;
    float weight = 0;     // combine weight
    float probability = 0;  // router softmax probability p[token, expert]
};

struct RoutingStats {
    std::vector<int64_t> tokens_per_expert;  // kept assignments per expert
    int64_t assignments_wanted = 0;          // topk: k·N; expert_choice: Σ capacities
    int64_t assignments_kept = 0;
    double dropped_fraction = 0;   // topk: dropped / wanted; expert_choice: tokens with no expert / N
    double router_entropy = 0;     // mean over tokens of −Σ_e p log p (nats)
    double aux_loss = 0;           // E·Σ_e f_e·P_e (1 when perfectly balanced), unscaled
    double z_loss = 0;             // mean over tokens of logsumexp(logits)², unscaled
};

struct RoutingDecision {
    std::vector<float> probabilities;      // [N,E] softmax of the logits
    std::vector<float> logsumexp;          // [N]
    std::vector<Assignment> assignments;   // kept, in token-major order (token, then rank)
    std::vector<int32_t> selected_offsets; // [N+1]: token n's selected experts (before capacity)
    std::vector<int32_t> selected_experts; //        in rank order — the renormalisation set
    std::vector<double> load_fraction;     // f_e used by the load-balancing loss
    RoutingStats stats;
};

// Capacity per expert for N tokens, or N·(k or 1) when cf ≤ 0 (no limit).
int64_t expert_capacity(const MoeConfig& moe, int64_t N, double capacity_factor);

RoutingDecision route(const MoeConfig& moe, const std::vector<float>& logits, int N,
                      double capacity_factor);

// d(loss)/d(logits) [N,E] from the gradients of the combine weights (one per assignment,
// same order as decision.assignments) plus the auxiliary losses with their coefficients.
std::vector<float> router_logits_gradient(const MoeConfig& moe, const RoutingDecision& decision,
                                          const std::vector<float>& dweights, int N);

}  // namespace upcycle
