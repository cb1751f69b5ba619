#include "core/moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"

namespace upcycle {

int64_t expert_capacity(const MoeConfig& moe, int64_t N, double capacity_factor) {
    const int64_t E = moe.experts;
    const int64_t k = moe.router == "topk" ? moe.k : 1;
    if (capacity_factor <= 0) return N;  // no limit: an expert can never receive more than N
    const double exact = static_cast<double>(k) * static_cast<double>(N) * capacity_factor /
                         static_cast<double>(E);
    // ceil, robust to k·N·cf/E landing a hair above an integer through rounding
    const auto capacity = static_cast<int64_t>(std::ceil(exact - 1e-9));
    return std::clamp<int64_t>(capacity, 1, N);
}

namespace {

void softmax_rows(const std::vector<float>& logits, int N, int E, std::vector<float>& probs,
                  std::vector<float>& lse) {
    probs.resize(static_cast<std::size_t>(N) * E);
    lse.resize(static_cast<std::size_t>(N));
    for (int n = 0; n < N; ++n) {
        const float* row = logits.data() + static_cast<std::size_t>(n) * E;
        float* p = probs.data() + static_cast<std::size_t>(n) * E;
        const float max = *std::max_element(row, row + E);
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += std::exp(static_cast<double>(row[e]) - max);
        for (int e = 0; e < E; ++e) {
            p[e] = static_cast<float>(std::exp(static_cast<double>(row[e]) - max) / sum);
        }
        lse[n] = static_cast<float>(max + std::log(sum));
    }
}

void fill_statistics(const MoeConfig& moe, RoutingDecision& d, int N) {
    const int E = moe.experts;
    auto& s = d.stats;
    s.tokens_per_expert.assign(static_cast<std::size_t>(E), 0);
    for (const auto& a : d.assignments) ++s.tokens_per_expert[a.expert];
    s.assignments_kept = static_cast<int64_t>(d.assignments.size());
    if (moe.router == "topk") {
        s.dropped_fraction = s.assignments_wanted > 0
                                 ? 1.0 - static_cast<double>(s.assignments_kept) / s.assignments_wanted
                                 : 0.0;
    } else {
        std::vector<char> routed(static_cast<std::size_t>(N), 0);
        for (const auto& a : d.assignments) routed[a.token] = 1;
        const auto none = std::count(routed.begin(), routed.end(), 0);
        s.dropped_fraction = N > 0 ? static_cast<double>(none) / N : 0.0;
    }
    double entropy = 0, z = 0;
    std::vector<double> mean_prob(static_cast<std::size_t>(E), 0.0);
    for (int n = 0; n < N; ++n) {
        const float* p = d.probabilities.data() + static_cast<std::size_t>(n) * E;
        for (int e = 0; e < E; ++e) {
            if (p[e] > 0) entropy -= p[e] * std::log(static_cast<double>(p[e]));
            mean_prob[e] += p[e];
        }
        z += static_cast<double>(d.logsumexp[n]) * d.logsumexp[n];
    }
    s.router_entropy = N > 0 ? entropy / N : 0;
    s.z_loss = N > 0 ? z / N : 0;
    s.aux_loss = 0;
    for (int e = 0; e < E; ++e) s.aux_loss += d.load_fraction[e] * (N > 0 ? mean_prob[e] / N : 0);
    s.aux_loss *= E;
}

}  // namespace

RoutingDecision route(const MoeConfig& moe, const std::vector<float>& logits, int N,
                      double capacity_factor) {
    const int E = moe.experts;
    UPCYCLE_ASSERT(E > 0 && static_cast<int64_t>(logits.size()) == static_cast<int64_t>(N) * E,
                   "router logits must be [N, E]");
    RoutingDecision d;
    softmax_rows(logits, N, E, d.probabilities, d.logsumexp);
    const int64_t capacity = expert_capacity(moe, N, capacity_factor);
    const bool renormalize = moe.combine == "renormalized";
    auto prob = [&](int n, int e) { return d.probabilities[static_cast<std::size_t>(n) * E + e]; };

    d.selected_offsets.assign(static_cast<std::size_t>(N) + 1, 0);
    d.load_fraction.assign(static_cast<std::size_t>(E), 0.0);
    // kept[n·S + slot] marks which of token n's selected experts survived capacity
    std::vector<char> kept;

    if (moe.router == "topk") {
        const int K = moe.k;
        d.selected_experts.resize(static_cast<std::size_t>(N) * K);
        std::vector<int> order(static_cast<std::size_t>(E));
        for (int n = 0; n < N; ++n) {
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
                const float pa = prob(n, a), pb = prob(n, b);
                return pa > pb || (pa == pb && a < b);
            });
            for (int j = 0; j < K; ++j) d.selected_experts[static_cast<std::size_t>(n) * K + j] = order[j];
            d.selected_offsets[n + 1] = (n + 1) * K;
        }
        for (const int e : d.selected_experts) d.load_fraction[e] += 1.0 / (static_cast<double>(N) * K);
        d.stats.assignments_wanted = static_cast<int64_t>(N) * K;
        // claim slots rank by rank; within a rank in token order or by probability
        kept.assign(static_cast<std::size_t>(N) * K, 0);
        std::vector<int64_t> used(static_cast<std::size_t>(E), 0);
        std::vector<int> tokens(static_cast<std::size_t>(N));
        for (int rank = 0; rank < K; ++rank) {
            std::iota(tokens.begin(), tokens.end(), 0);
            if (moe.priority == "probability") {
                std::stable_sort(tokens.begin(), tokens.end(), [&](int a, int b) {
                    return prob(a, d.selected_experts[static_cast<std::size_t>(a) * K + rank]) >
                           prob(b, d.selected_experts[static_cast<std::size_t>(b) * K + rank]);
                });
            }
            for (const int n : tokens) {
                const int e = d.selected_experts[static_cast<std::size_t>(n) * K + rank];
                if (used[e] < capacity) {
                    ++used[e];
                    kept[static_cast<std::size_t>(n) * K + rank] = 1;
                }
            }
        }
    } else {  // expert_choice
        std::vector<std::vector<char>> chosen(static_cast<std::size_t>(N), std::vector<char>(E, 0));
        std::vector<int> tokens(static_cast<std::size_t>(N));
        for (int e = 0; e < E; ++e) {
            std::iota(tokens.begin(), tokens.end(), 0);
            std::partial_sort(tokens.begin(), tokens.begin() + capacity, tokens.end(),
                              [&](int a, int b) {
                                  const float pa = prob(a, e), pb = prob(b, e);
                                  return pa > pb || (pa == pb && a < b);
                              });
            for (int64_t i = 0; i < capacity; ++i) chosen[tokens[i]][e] = 1;
        }
        for (int n = 0; n < N; ++n) {
            for (int e = 0; e < E; ++e) {
                if (chosen[n][e]) d.selected_experts.push_back(e);
            }
            d.selected_offsets[n + 1] = static_cast<int32_t>(d.selected_experts.size());
        }
        kept.assign(d.selected_experts.size(), 1);
        d.stats.assignments_wanted = capacity * E;
        for (const int e : d.selected_experts) {
            d.load_fraction[e] += 1.0 / static_cast<double>(d.selected_experts.size());
        }
    }

    for (int n = 0; n < N; ++n) {
        double selected_sum = 0;
        for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
            selected_sum += prob(n, d.selected_experts[j]);
        }
        for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
            if (!kept[j]) continue;
            const int e = d.selected_experts[j];
            Assignment a;
            a.token = n;
            a.expert = e;
            a.probability = prob(n, e);
            a.weight = renormalize ? static_cast<float>(a.probability / selected_sum) : a.probability;
            d.assignments.push_back(a);
        }
    }
    fill_statistics(moe, d, N);
    return d;
}

std::vector<float> router_logits_gradient(const MoeConfig& moe, const RoutingDecision& d,
                                          const std::vector<float>& dweights, int N) {
    const int E = moe.experts;
    UPCYCLE_ASSERT(dweights.size() == d.assignments.size(), "one weight gradient per assignment");
    const bool renormalize = moe.combine == "renormalized";
    // dL/dp, accumulated per token
    std::vector<double> dprob(static_cast<std::size_t>(N) * E, 0.0);
    std::size_t a = 0;
    for (int n = 0; n < N; ++n) {
        double selected_sum = 0;
        for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
            selected_sum += d.probabilities[static_cast<std::size_t>(n) * E + d.selected_experts[j]];
        }
        // the kept assignments of token n are contiguous in d.assignments
        double weighted = 0;  // Σ dw_i · w_i over kept i (renormalized: ∂/∂S term)
        const std::size_t first = a;
        while (a < d.assignments.size() && d.assignments[a].token == n) {
            const auto& as = d.assignments[a];
            if (renormalize) {
                dprob[static_cast<std::size_t>(n) * E + as.expert] += dweights[a] / selected_sum;
                weighted += static_cast<double>(dweights[a]) * as.weight;
            } else {
                dprob[static_cast<std::size_t>(n) * E + as.expert] += dweights[a];
            }
            ++a;
        }
        if (renormalize && a > first) {
            // w_i = p_i / S with S = Σ_selected p  ⇒  ∂L/∂p_s −= Σ_i dw_i·w_i / S for every selected s
            for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
                dprob[static_cast<std::size_t>(n) * E + d.selected_experts[j]] -= weighted / selected_sum;
            }
        }
    }
    // load balancing: aux_coef · E · Σ_e f_e · (1/N) Σ_n p[n,e]  (f_e held constant)
    const double aux_scale = moe.aux_loss_coef * E / static_cast<double>(N);
    for (int n = 0; n < N; ++n) {
        for (int e = 0; e < E; ++e) dprob[static_cast<std::size_t>(n) * E + e] += aux_scale * d.load_fraction[e];
    }
    // softmax backward, then the z-loss: z_coef · (1/N) Σ_n lse_n²  ⇒  2·z_coef/N · lse_n · p
    std::vector<float> dlogits(static_cast<std::size_t>(N) * E);
    for (int n = 0; n < N; ++n) {
        const float* p = d.probabilities.data() + static_cast<std::size_t>(n) * E;
        const double* g = dprob.data() + static_cast<std::size_t>(n) * E;
        double dot = 0;
        for (int e = 0; e < E; ++e) dot += p[e] * g[e];
        const double z = 2.0 * moe.z_loss_coef / N * d.logsumexp[n];
        for (int e = 0; e < E; ++e) {
            dlogits[static_cast<std::size_t>(n) * E + e] = static_cast<float>(p[e] * (g[e] - dot) + z * p[e]);
        }
    }
    return dlogits;
}

}  // namespace upcycle
