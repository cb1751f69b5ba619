#include "core/moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"

namespace upcycle {

int64_t expert_capacity(const MoeConfig& moe, int64_t N, double capacity_factor) {
    const int64_t E = moe.experts;
    const int64_t k = moe.router == RouterKind::TopK ? moe.k : 1;
    if (capacity_factor <= 0) return N;  // no limit: an expert can never receive more than N
    const double exact =
        static_cast<double>(k) * static_cast<double>(N) * capacity_factor / static_cast<double>(E);
    // ceil, robust to k·N·cf/E landing a hair above an integer through rounding
    const auto capacity = static_cast<int64_t>(std::ceil(exact - 1e-9));
    return std::clamp<int64_t>(capacity, 1, N);
}

MoeRouting routing_rule(const MoeConfig& moe, int N, double capacity_factor, bool pad_rows) {
    MoeRouting r;
    r.N = N;
    r.E = moe.experts;
    r.expert_choice = moe.router == RouterKind::ExpertChoice;
    r.K = r.expert_choice ? 1 : moe.k;
    r.renormalize = moe.combine == Combine::Renormalized;
    r.probability_priority = !r.expert_choice && moe.priority == Priority::Probability;
    r.capacity = static_cast<int>(expert_capacity(moe, N, capacity_factor));
    r.rows_per_expert = r.expert_choice || (pad_rows && capacity_factor > 0) ? r.capacity : 0;
    r.aux_loss_coef = moe.aux_loss_coef;
    r.z_loss_coef = moe.z_loss_coef;
    return r;
}

namespace {

void softmax_rows(const float* logits, int N, int E, std::vector<float>& probs,
                  std::vector<float>& lse) {
    probs.resize(static_cast<std::size_t>(N) * E);
    lse.resize(static_cast<std::size_t>(N));
    for (int n = 0; n < N; ++n) {
        const float* row = logits + static_cast<std::size_t>(n) * E;
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

// The sums behind the statistics (MoeRouting::statistics), each over tokens in order.
std::vector<double> routing_sums(const RoutingDecision& d, int N, int E) {
    std::vector<double> sums(static_cast<std::size_t>(kRoutingSums + E), 0.0);
    std::vector<char> routed(static_cast<std::size_t>(N), 0);
    for (const auto& a : d.assignments) routed[a.token] = 1;
    sums[kUnroutedTokens] = static_cast<double>(std::count(routed.begin(), routed.end(), 0));
    for (int n = 0; n < N; ++n) {
        const float* p = d.probabilities.data() + static_cast<std::size_t>(n) * E;
        for (int e = 0; e < E; ++e) {
            if (p[e] > 0) sums[kEntropySum] -= p[e] * std::log(static_cast<double>(p[e]));
            sums[kRoutingSums + e] += p[e];
        }
        sums[kSquaredLseSum] += static_cast<double>(d.logsumexp[n]) * d.logsumexp[n];
    }
    return sums;
}

}  // namespace

RoutingStats routing_stats(const MoeRouting& rule, const int32_t* expert_count, const double* sums,
                           const double* load_fraction) {
    const int N = rule.N, E = rule.E;
    RoutingStats s;
    s.tokens_per_expert.assign(expert_count, expert_count + E);
    for (const auto c : s.tokens_per_expert) s.assignments_kept += c;
    if (rule.expert_choice) {
        s.assignments_wanted = static_cast<int64_t>(rule.capacity) * E;
        s.dropped_fraction = N > 0 ? sums[kUnroutedTokens] / N : 0.0;
    } else {
        s.assignments_wanted = static_cast<int64_t>(N) * rule.K;
        s.dropped_fraction =
            s.assignments_wanted > 0
                ? 1.0 - static_cast<double>(s.assignments_kept) / s.assignments_wanted
                : 0.0;
    }
    s.router_entropy = N > 0 ? sums[kEntropySum] / N : 0;
    s.z_loss = N > 0 ? sums[kSquaredLseSum] / N : 0;
    s.aux_loss = 0;
    for (int e = 0; e < E; ++e)
        s.aux_loss += load_fraction[e] * (N > 0 ? sums[kRoutingSums + e] / N : 0);
    s.aux_loss *= E;
    return s;
}

RoutingDecision route(const MoeConfig& moe, const std::vector<float>& logits, int N,
                      double capacity_factor) {
    UPCYCLE_ASSERT(static_cast<int64_t>(logits.size()) == static_cast<int64_t>(N) * moe.experts,
                   "router logits must be [N, E]");
    return route(routing_rule(moe, N, capacity_factor, false), logits.data());
}

RoutingDecision route(const MoeRouting& rule, const float* logits) {
    const int N = rule.N, E = rule.E;
    UPCYCLE_ASSERT(E > 0 && N >= 0, "routing needs experts");
    RoutingDecision d;
    softmax_rows(logits, N, E, d.probabilities, d.logsumexp);
    const int64_t capacity = rule.capacity;
    auto prob = [&](int n, int e) { return d.probabilities[static_cast<std::size_t>(n) * E + e]; };

    d.selected_offsets.assign(static_cast<std::size_t>(N) + 1, 0);
    // kept[n·S + slot] marks which of token n's selected experts survived capacity
    std::vector<char> kept;

    if (!rule.expert_choice) {
        const int K = rule.K;
        d.selected_experts.resize(static_cast<std::size_t>(N) * K);
        std::vector<int> order(static_cast<std::size_t>(E));
        for (int n = 0; n < N; ++n) {
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
                const float pa = prob(n, a), pb = prob(n, b);
                return pa > pb || (pa == pb && a < b);
            });
            for (int j = 0; j < K; ++j)
                d.selected_experts[static_cast<std::size_t>(n) * K + j] = order[j];
            d.selected_offsets[n + 1] = (n + 1) * K;
        }
        // claim slots rank by rank; within a rank in token order or by probability
        kept.assign(static_cast<std::size_t>(N) * K, 0);
        std::vector<int64_t> used(static_cast<std::size_t>(E), 0);
        std::vector<int> tokens(static_cast<std::size_t>(N));
        for (int rank = 0; rank < K; ++rank) {
            std::iota(tokens.begin(), tokens.end(), 0);
            if (rule.probability_priority) {
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
    } else {
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
    }
    // f_e: the fraction of selections (before capacity) naming e, as a count over the total
    // (exact on any device, unlike a running sum of 1/total)
    std::vector<int64_t> selections(static_cast<std::size_t>(E), 0);
    for (const int e : d.selected_experts) ++selections[e];
    d.load_fraction.assign(static_cast<std::size_t>(E), 0.0);
    for (int e = 0; e < E; ++e) {
        d.load_fraction[e] = d.selected_experts.empty()
                                 ? 0.0
                                 : static_cast<double>(selections[e]) / d.selected_experts.size();
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
            a.weight =
                rule.renormalize ? static_cast<float>(a.probability / selected_sum) : a.probability;
            d.assignments.push_back(a);
        }
    }
    d.sums = routing_sums(d, N, E);
    std::vector<int32_t> counts(static_cast<std::size_t>(E), 0);
    for (const auto& a : d.assignments) ++counts[a.expert];
    d.stats = routing_stats(rule, counts.data(), d.sums.data(), d.load_fraction.data());
    return d;
}

void write_routing(const RoutingDecision& d, const MoeRouting& r) {
    const int N = r.N, E = r.E, S = r.slots();
    const std::size_t slots = static_cast<std::size_t>(N) * S;
    std::copy(d.probabilities.begin(), d.probabilities.end(), r.probabilities);
    std::copy(d.logsumexp.begin(), d.logsumexp.end(), r.logsumexp);
    std::copy(d.load_fraction.begin(), d.load_fraction.end(), r.load_fraction);
    std::copy(d.sums.begin(), d.sums.end(), r.statistics);
    std::fill(r.slot_expert, r.slot_expert + slots, -1);
    std::fill(r.slot_row, r.slot_row + slots, -1);
    std::fill(r.slot_weight, r.slot_weight + slots, 0.0f);
    std::fill(r.row_token, r.row_token + r.rows(), -1);
    for (int n = 0; n < N; ++n) {
        for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
            r.slot_expert[static_cast<std::size_t>(n) * S + (j - d.selected_offsets[n])] =
                d.selected_experts[j];
        }
    }
    // rows: grouped by expert, in token order within one (assignments are token-major)
    std::fill(r.expert_count, r.expert_count + E, 0);
    for (const auto& a : d.assignments) ++r.expert_count[a.expert];
    r.expert_offset[0] = 0;
    for (int e = 0; e < E; ++e) {
        UPCYCLE_ASSERT(r.rows_per_expert == 0 || r.expert_count[e] <= r.rows_per_expert,
                       "an expert kept more rows than its padded block holds");
        r.expert_offset[e + 1] = r.rows_per_expert > 0 ? (e + 1) * r.rows_per_expert
                                                       : r.expert_offset[e] + r.expert_count[e];
    }
    std::vector<int32_t> cursor(r.expert_offset, r.expert_offset + E);
    int slot = 0, token = -1;
    for (const auto& a : d.assignments) {
        if (a.token != token) token = a.token, slot = 0;
        // the token's kept assignments follow its selected experts' order
        while (slot < S && r.slot_expert[static_cast<std::size_t>(token) * S + slot] != a.expert)
            ++slot;
        UPCYCLE_ASSERT(slot < S, "a kept assignment's expert is not among its token's selected");
        const std::size_t at = static_cast<std::size_t>(token) * S + slot;
        const int32_t row = cursor[a.expert]++;
        r.slot_row[at] = row;
        r.slot_weight[at] = a.weight;
        r.row_token[row] = token;
    }
}

RoutingDecision read_routing(Backend& be, const MoeRouting& r) {
    const int N = r.N, E = r.E, S = r.slots();
    const std::size_t slots = static_cast<std::size_t>(N) * S;
    auto fetch = [&be](auto& host, const void* device, std::size_t count) {
        host.resize(count);
        be.download(host.data(), device, count * sizeof(host[0]));
    };
    RoutingDecision d;
    std::vector<int32_t> slot_expert, slot_row, counts;
    std::vector<float> slot_weight;
    fetch(d.probabilities, r.probabilities, static_cast<std::size_t>(N) * E);
    fetch(d.logsumexp, r.logsumexp, static_cast<std::size_t>(N));
    fetch(d.load_fraction, r.load_fraction, static_cast<std::size_t>(E));
    fetch(d.sums, r.statistics, static_cast<std::size_t>(kRoutingSums + E));
    fetch(slot_expert, r.slot_expert, slots);
    fetch(slot_row, r.slot_row, slots);
    fetch(slot_weight, r.slot_weight, slots);
    fetch(counts, r.expert_count, static_cast<std::size_t>(E));
    d.selected_offsets.assign(static_cast<std::size_t>(N) + 1, 0);
    for (int n = 0; n < N; ++n) {
        for (int s = 0; s < S; ++s) {
            const std::size_t at = static_cast<std::size_t>(n) * S + s;
            if (slot_expert[at] < 0) continue;
            d.selected_experts.push_back(slot_expert[at]);
            if (slot_row[at] >= 0) {
                d.assignments.push_back(
                    {n, slot_expert[at], slot_weight[at],
                     d.probabilities[static_cast<std::size_t>(n) * E + slot_expert[at]]});
            }
        }
        d.selected_offsets[n + 1] = static_cast<int32_t>(d.selected_experts.size());
    }
    d.stats = routing_stats(r, counts.data(), d.sums.data(), d.load_fraction.data());
    return d;
}

void router_logits_gradient(const MoeRouting& r, const float* dslot_weight, float* dlogits) {
    const int N = r.N, E = r.E, S = r.slots();
    // load balancing: aux_coef · E · Σ_e f_e · (1/N) Σ_n p[n,e]  (f_e held constant)
    const double aux_scale = N > 0 ? r.aux_loss_coef * E / static_cast<double>(N) : 0.0;
    std::vector<double> dprob(static_cast<std::size_t>(E));
    for (int n = 0; n < N; ++n) {
        const float* p = r.probabilities + static_cast<std::size_t>(n) * E;
        const int32_t* expert = r.slot_expert + static_cast<std::size_t>(n) * S;
        const int32_t* row = r.slot_row + static_cast<std::size_t>(n) * S;
        const float* w = r.slot_weight + static_cast<std::size_t>(n) * S;
        const float* dw = dslot_weight + static_cast<std::size_t>(n) * S;
        std::fill(dprob.begin(), dprob.end(), 0.0);
        double selected_sum = 0;
        for (int s = 0; s < S; ++s) {
            if (expert[s] >= 0) selected_sum += p[expert[s]];
        }
        // dL/dp from the kept slots' combine weights
        double weighted = 0;  // Σ dw_s · w_s over kept s (renormalized: the ∂/∂(Σ p) term)
        bool any_kept = false;
        for (int s = 0; s < S; ++s) {
            if (row[s] < 0) continue;
            any_kept = true;
            if (r.renormalize) {
                dprob[expert[s]] += dw[s] / selected_sum;
                weighted += static_cast<double>(dw[s]) * w[s];
            } else {
                dprob[expert[s]] += dw[s];
            }
        }
        if (r.renormalize && any_kept) {
            // w_s = p_s / Σ with Σ = Σ_selected p  ⇒  ∂L/∂p_t −= Σ_s dw_s·w_s / Σ for every selected t
            for (int s = 0; s < S; ++s) {
                if (expert[s] >= 0) dprob[expert[s]] -= weighted / selected_sum;
            }
        }
        for (int e = 0; e < E; ++e) dprob[e] += aux_scale * r.load_fraction[e];
        // softmax backward, then the z-loss: z_coef · (1/N) Σ_n lse_n²  ⇒  2·z_coef/N · lse_n · p
        double dot = 0;
        for (int e = 0; e < E; ++e) dot += p[e] * dprob[e];
        const double z = 2.0 * r.z_loss_coef / N * r.logsumexp[n];
        for (int e = 0; e < E; ++e) {
            dlogits[static_cast<std::size_t>(n) * E + e] =
                static_cast<float>(p[e] * (dprob[e] - dot) + z * p[e]);
        }
    }
}

}  // namespace upcycle
