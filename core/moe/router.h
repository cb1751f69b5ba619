#pragma once
// The router: decides which expert sees which token, and with what combine weight.
// This file is the rule's reference, on the host: route() gives the decision in a readable
// form (RoutingDecision), write_routing() lays it out in the backend's fixed-shape form
// (MoeRouting, core/backend.h), which the CPU backend's moe_route() is. Other backends
// compute the same decision on the device and are tested against it.
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

#include "core/backend.h"
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
    std::vector<double> sums;              // [kRoutingSums + E], as MoeRouting::statistics
    RoutingStats stats;
};

// Capacity per expert for N tokens, or N when cf ≤ 0 (no limit).
int64_t expert_capacity(const MoeConfig& moe, int64_t N, double capacity_factor);

// The rule of a MoeRouting (no buffers) for N tokens at this capacity factor. Expert choice
// is always padded (P = capacity: every block is full); topk is padded (P = capacity) when
// pad_rows and a capacity bounds the rows (cf > 0), and compact otherwise.
MoeRouting routing_rule(const MoeConfig& moe, int N, double capacity_factor, bool pad_rows);

// The reference decision for logits [rule.N, rule.E] (host memory).
RoutingDecision route(const MoeRouting& rule, const float* logits);
RoutingDecision route(const MoeConfig& moe, const std::vector<float>& logits, int N,
                      double capacity_factor);

// The decision in the backend's form: fills every buffer of r, which must be host memory
// (the CPU backend's moe_route is route() then this).
void write_routing(const RoutingDecision& d, const MoeRouting& r);
// A backend's decision read back into the readable form (tests, inspection). Downloads.
RoutingDecision read_routing(Backend& be, const MoeRouting& r);

// RoutingStats from the backend's sums (MoeRouting::statistics), counts and load fractions.
RoutingStats routing_stats(const MoeRouting& rule, const int32_t* expert_count,
                           const double* sums, const double* load_fraction);

// dlogits [N,E] (overwritten) from the gradients of the combine weights, one per slot
// (dslot_weight [N,S], 0 on dropped and empty slots), plus the auxiliary losses with r's
// coefficients. Every pointer is host memory (the CPU backend's moe_route_backward).
void router_logits_gradient(const MoeRouting& r, const float* dslot_weight, float* dlogits);

}  // namespace upcycle
