#pragma once
// Device-side MoE routing (kernels/cuda/moe_router.cu): the steps of its passes for one token
// or one item, as __host__ __device__ functions. Each is the reference's arithmetic
// (core/moe/router.cpp: route, write_routing, router_logits_gradient) for that token or item,
// in the reference's operation order, so that it reads line by line against it; and being
// callable on the host, the index logic can be exercised without a GPU. The kernels in
// moe_router.cu are grid-stride loops around these, plus CUB sorts and scans.
//
// Shapes: N tokens, E experts, K top-k, S slots per token (topk: K; expert choice: E),
// P rows per expert (padded layout; 0 = compact), c = capacity.
#include <cuda/std/bit>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace upcycle::gpu::routing {

constexpr uint32_t kSignBit = 0x80000000u;
constexpr int kWordBits = 32;
constexpr uint64_t kLowWord = 0xffffffffu;

// A uint32 whose unsigned order is the DESCENDING order of the float p: the float's bits mapped
// to an order-preserving unsigned form (negative values reversed below, positives moved above
// by setting the sign bit), then complemented. −0 is made +0 first, so the two zeros (which
// compare equal) get one key. Equal floats get equal keys; for non-NaN a, b:
//   a > b  ⇔  descending_key(a) < descending_key(b).
// Probabilities are ≥ 0 (or NaN from NaN logits, which still get a key: the order stays total).
__host__ __device__ inline uint32_t descending_key(float p) {
    const float canonical = p == 0.0f ? 0.0f : p;
    const uint32_t bits = cuda::std::bit_cast<uint32_t>(canonical);
    const uint32_t ascending = (bits & kSignBit) ? ~bits : (bits | kSignBit);
    return ~ascending;
}

// The order of experts within a token (topk): higher probability first, ties to the lower
// expert index — the reference's comparator `pa > pb || (pa == pb && a < b)` — as one 64-bit
// key, smaller = better: the probability's descending key above the expert index.
__host__ __device__ inline uint64_t expert_rank_key(float p, int e) {
    return static_cast<uint64_t>(descending_key(p)) << kWordBits | static_cast<uint32_t>(e);
}

// Token n's softmax over its E logits, as router.cpp's softmax_rows: the float maximum (the
// first largest, as std::max_element), a SEQUENTIAL double sum of exp(l − max) over
// e = 0..E−1, p = float(exp(l − max) / sum), lse = float(max + log(sum)). Also the token's
// entropy −Σ_e p·log p over p > 0, in double from the float p (routing_sums' terms).
__host__ __device__ inline void softmax_token(const float* logits, int E, float* p, float* lse,
                                              double* entropy) {
    float max = logits[0];
    for (int e = 1; e < E; ++e) {
        if (max < logits[e]) max = logits[e];
    }
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += ::exp(static_cast<double>(logits[e]) - max);
    double h = 0;
    for (int e = 0; e < E; ++e) {
        const float pe = static_cast<float>(::exp(static_cast<double>(logits[e]) - max) / sum);
        p[e] = pe;
        if (pe > 0) h -= pe * ::log(static_cast<double>(pe));
    }
    *lse = static_cast<float>(max + ::log(sum));
    *entropy = h;
}

// Token n's top K experts in rank order (the reference's partial_sort). expert_rank_key is a
// strict total order, so rank j's expert is the one with the smallest key greater than rank
// j−1's: K scans over the E probabilities, no sort and no scratch. Needs K ≤ E.
__host__ __device__ inline void select_topk_token(const float* p, int E, int K, int32_t* experts) {
    uint64_t previous = 0;
    for (int j = 0; j < K; ++j) {
        uint64_t best = ~uint64_t{0};
        for (int e = 0; e < E; ++e) {
            const uint64_t key = expert_rank_key(p[e], e);
            if ((j == 0 || key > previous) && key < best) best = key;
        }
        experts[j] = static_cast<int32_t>(best & kLowWord);
        previous = best;
    }
}

// Combine weights of token n's S slots (the reference's assignment loop): the probabilities of
// the selected experts summed in double in slot order (the renormalisation set: topk's top K
// before capacity; expert choice's experts that chose the token), then w = float(p / sum)
// (renormalized) or p. An empty slot (expert −1) gets 0. Dropped slots are zeroed later, once
// capacity has been claimed.
__host__ __device__ inline void slot_weights_token(const float* p, const int32_t* experts, int S,
                                                   bool renormalize, float* weights) {
    double selected_sum = 0;
    for (int s = 0; s < S; ++s) {
        if (experts[s] >= 0) selected_sum += p[experts[s]];
    }
    for (int s = 0; s < S; ++s) {
        if (experts[s] < 0) {
            weights[s] = 0.0f;
            continue;
        }
        const float probability = p[experts[s]];
        weights[s] = renormalize ? static_cast<float>(probability / selected_sum) : probability;
    }
}

// ---- topk: the capacity claim ---------------------------------------------------------------
// Slot (n, r) (rank r of token n, expert e) belongs to the group g = r·E + e. Sorting the N·K
// slots by this key, stably over the slot index n·K + r, lines up every group's slots in
// claim order: groups rank-major (every first choice before any second choice), and within a
// group by descending probability (probability priority) or, with an empty low word, in
// input order = ascending token (token order; also the tie order of the reference's
// stable_sort).
__host__ __device__ inline uint64_t claim_key(int r, int e, int E, float p, bool by_probability) {
    const uint64_t group =
        static_cast<uint64_t>(r) * static_cast<uint64_t>(E) + static_cast<uint64_t>(e);
    return group << kWordBits | (by_probability ? descending_key(p) : 0u);
}

// From the selection counts count[g] of the groups g = r·E + e (K·E of them):
//   group_start[g] = Σ_{g' < g} count[g']: where group g begins in the sorted claim order;
//   used_before[g] = what expert e kept at ranks < r: the reference's used[e] when rank r
//                    starts. Each rank keeps min(count, c − used) more, so
//                    used_before[(r+1)·E + e] = min(c, used_before[r·E + e] + count[r·E + e]).
// Sequential (K·E is small); one thread runs it.
__host__ __device__ inline void claim_setup(const int32_t* count, int K, int E, int capacity,
                                            int32_t* group_start, int32_t* used_before) {
    int32_t start = 0;
    for (int g = 0; g < K * E; ++g) {
        group_start[g] = start;
        start += count[g];
    }
    for (int e = 0; e < E; ++e) {
        int32_t used = 0;
        for (int r = 0; r < K; ++r) {
            used_before[r * E + e] = used;
            const int32_t after = used + count[r * E + e];
            used = after < capacity ? after : capacity;
        }
    }
}

// Whether the slot at position i of the sorted claim order, in group g, keeps its expert: its
// place in the group (i − group_start[g]) plus what the expert kept at earlier ranks is below
// the capacity — the reference's `used[e] < capacity` at the moment its loop reaches the slot.
__host__ __device__ inline bool claim_keeps(int64_t i, uint32_t group, const int32_t* group_start,
                                            const int32_t* used_before, int capacity) {
    return used_before[group] + (i - group_start[group]) < capacity;
}

// ---- expert choice ------------------------------------------------------------------------
// Item i = n·E + e (token n, expert e) sorted by this key, stably over i: experts ascending,
// each expert's N tokens by descending probability, ties in ascending token order (the
// reference's comparator). Expert e's segment is [e·N, (e+1)·N); its first c tokens are chosen.
__host__ __device__ inline uint64_t choice_key(int e, float p) {
    return static_cast<uint64_t>(e) << kWordBits | descending_key(p);
}

// Token n's slots under expert choice: the experts that chose it (kept[e·N + n] = 1) in
// ascending order, then empty slots (−1). S = E. Returns how many experts chose it.
__host__ __device__ inline int expert_choice_slots_token(int n, int N, int E, const int32_t* kept,
                                                         int32_t* experts) {
    int s = 0;
    for (int e = 0; e < E; ++e) {
        if (kept[static_cast<int64_t>(e) * N + n]) experts[s++] = e;
    }
    for (int t = s; t < E; ++t) experts[t] = -1;
    return s;
}

// ---- rows -------------------------------------------------------------------------------------
// Token n's rows, once the decision is made: kept[e·N + n] = 1 for every kept (token, expert)
// pair ([E,N], expert-major, plus one 0 at the end) and kept_before its exclusive prefix sum
// (E·N + 1 entries), so kept_before[e·N + n] counts the kept pairs of experts < e plus those of
// expert e with tokens < n. A kept slot with expert e gets the row
//   padded (P > 0):  e·P + kept_before[e·N + n] − kept_before[e·N]
//   compact (P = 0): kept_before[e·N + n]   (kept_before[e·N] = Σ_{e' < e} count[e'] = offset[e])
// — offset[e] + (e's kept tokens before n), the reference's row cursor walking the assignments
// in token order — and row_token[row] = n. A dropped or empty slot gets row −1, weight 0.
// A token has at most one slot per expert, so (n, e) names the slot. Returns whether the token
// kept any slot.
__host__ __device__ inline bool assign_rows_token(int n, int N, int S, int P, const int32_t* kept,
                                                  const int32_t* kept_before,
                                                  const int32_t* experts, int32_t* slot_row,
                                                  float* slot_weight, int32_t* row_token) {
    bool routed = false;
    for (int s = 0; s < S; ++s) {
        const int32_t e = experts[s];
        const int64_t pair = static_cast<int64_t>(e) * N + n;
        if (e >= 0 && kept[pair]) {
            const int64_t first = static_cast<int64_t>(e) * N;
            const int32_t row =
                P > 0 ? e * P + (kept_before[pair] - kept_before[first]) : kept_before[pair];
            slot_row[s] = row;
            row_token[row] = n;
            routed = true;
        } else {
            slot_row[s] = -1;
            slot_weight[s] = 0.0f;
        }
    }
    return routed;
}

// Expert e's rows and load: count[e] = kept_before[(e+1)·N] − kept_before[e·N]; offset[e] = e·P
// (padded) or kept_before[e·N] (compact), and offset[E] after the last expert; the load fraction
// f_e = (selections naming e) / (all selections), in double from integer counts, as the
// reference (selection_count holds `ranks` rows of E counts: topk's K ranks, or 1).
__host__ __device__ inline void finalize_expert(int e, int N, int E, int ranks, int P,
                                                const int32_t* kept_before,
                                                const int32_t* selection_count,
                                                int32_t* expert_count, int32_t* expert_offset,
                                                double* load_fraction) {
    const int64_t first = static_cast<int64_t>(e) * N, end = first + N;
    expert_count[e] = kept_before[end] - kept_before[first];
    expert_offset[e] = P > 0 ? e * P : kept_before[first];
    if (e == E - 1) expert_offset[E] = P > 0 ? E * P : kept_before[end];
    int64_t total = 0, selections = 0;
    for (int g = 0; g < ranks * E; ++g) {
        total += selection_count[g];
        if (g % E == e) selections += selection_count[g];
    }
    load_fraction[e] =
        total == 0 ? 0.0 : static_cast<double>(selections) / static_cast<double>(total);
}

// ---- backward -------------------------------------------------------------------------------
// Token n's dlogits[n,:] (overwritten), router_logits_gradient's per-token arithmetic in its
// operation order: dL/dp from the kept slots' combine-weight gradients (renormalized: through
// w = p / Σ_selected p), plus the load-balancing term aux_scale·f_e, through the softmax, plus
// the z-loss term z_scale·lse·p. aux_scale = aux_coef·E/N and z_scale = 2·z_coef/N come from the
// host (the reference's expressions). dprob is this token's column of an [E,N] double scratch
// (element e at dprob[e·N]): the reference's per-token dprob vector.
__host__ __device__ inline void router_gradient_token(
    int n, int N, int E, int S, bool renormalize, double aux_scale, double z_scale,
    const float* probabilities, const float* logsumexp, const int32_t* slot_expert,
    const int32_t* slot_row, const float* slot_weight, const float* dslot_weight,
    const double* load_fraction, double* dprob, float* dlogits) {
    const float* p = probabilities + static_cast<int64_t>(n) * E;
    const int32_t* expert = slot_expert + static_cast<int64_t>(n) * S;
    const int32_t* row = slot_row + static_cast<int64_t>(n) * S;
    const float* w = slot_weight + static_cast<int64_t>(n) * S;
    const float* dw = dslot_weight + static_cast<int64_t>(n) * S;
    float* dl = dlogits + static_cast<int64_t>(n) * E;
    const int64_t stride = N;  // dprob[e] of this token is dprob[e·N]
    for (int e = 0; e < E; ++e) dprob[e * stride] = 0.0;
    double selected_sum = 0;
    for (int s = 0; s < S; ++s) {
        if (expert[s] >= 0) selected_sum += p[expert[s]];
    }
    double weighted = 0;  // Σ dw_s·w_s over the kept slots
    bool any_kept = false;
    for (int s = 0; s < S; ++s) {
        if (row[s] < 0) continue;
        any_kept = true;
        if (renormalize) {
            dprob[expert[s] * stride] += dw[s] / selected_sum;
            weighted += static_cast<double>(dw[s]) * w[s];
        } else {
            dprob[expert[s] * stride] += dw[s];
        }
    }
    if (renormalize && any_kept) {
        for (int s = 0; s < S; ++s) {
            if (expert[s] >= 0) dprob[expert[s] * stride] -= weighted / selected_sum;
        }
    }
    for (int e = 0; e < E; ++e) dprob[e * stride] += aux_scale * load_fraction[e];
    double dot = 0;
    for (int e = 0; e < E; ++e) dot += p[e] * dprob[e * stride];
    const double z = z_scale * logsumexp[n];
    for (int e = 0; e < E; ++e) {
        dl[e] = static_cast<float>(p[e] * (dprob[e * stride] - dot) + z * p[e]);
    }
}

}  // namespace upcycle::gpu::routing
