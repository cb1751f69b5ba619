// Mixture-of-Experts routing on the GPU: moe_route and moe_route_backward of core/backend.h.
// Specification: the CPU backend (kernels/cpu/moe_router.cpp), i.e. write_routing(route())
// and router_logits_gradient() of core/moe/router.cpp, which states the rule. The per-token and
// per-item arithmetic lives in moe_router.cuh, written in the reference's operation order.
//
// Shapes: N tokens, E experts, K top-k, S slots per token (topk K, expert choice E),
// P = r.rows_per_expert (padded rows; 0 = compact), c = r.capacity.
//
// moe_route, all on the backend's stream, nothing read back to the host:
//  1. softmax (one thread per token): probabilities [N,E], logsumexp [N] and the token's
//     entropy, with the reference's float max and SEQUENTIAL double sum over e, so they are the
//     reference's bits (up to a last-ulp difference between CUDA's and the host's exp/log).
//  2. the selection:
//     topk (one thread per token): the K best experts in rank order by (probability desc,
//       expert asc), the candidate combine weights (renormalised over the K in slot order), a
//       count per (rank, expert) group, and each slot's claim key. Then the capacity claim, for
//       every rank at once: a stable CUB radix sort of the N·K slots by (group r·E + e, then
//       descending probability or nothing) puts each group in its claim order; a slot keeps its
//       expert iff (what the expert kept at earlier ranks) + (its place in its group) < c,
//       which is the reference's sequential `used[e] < capacity` test.
//     expert choice: a stable CUB radix sort of the N·E (token, expert) items by (expert,
//       descending probability): expert e's segment [e·N, (e+1)·N) lists its tokens best first,
//       ties in token order, and its first c are chosen. Then one thread per token lists the
//       experts that chose it in ascending order and their combine weights.
//     Either way the result is kept[E,N]: 1 for every kept (token, expert) pair.
//  3. rows: an exclusive CUB scan of kept (expert-major, E·N + 1 entries) gives each kept pair
//     its place among its expert's kept tokens in token order; one thread per token writes its
//     slots' rows (row = offset[e] + place), row_token, and zeroes dropped slots' weights.
//     offset[e] = e·P (padded) or the scan at e·N (compact: the exclusive prefix sum of the
//     counts). Every other row_token stays −1 (a memset first): padding inside a padded
//     block, or the compact layout's tail from offset[E] on when capacity dropped some.
//  4. per expert: count, offset and the load fraction (integer selection counts over their
//     total, in double, as the reference); then the statistics: one block per sum, each a
//     fixed-order reduction in double (strided per-thread sums, then a fixed tree).
// moe_route_backward: one thread per token running router_logits_gradient's per-token
// arithmetic in double in its order (its dprob vector in an [E,N] scratch, coalesced).
//
// Determinism: every value is written by one thread; the only atomics are integer counts
// (order-independent); the sorts are stable radix sorts and the scan is an integer scan; the
// float reductions use fixed trees. So the decision equals the reference's exactly (the same
// probabilities give the same comparisons), and repeated runs are bit-identical.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"
#include "kernels/cuda/moe_router.cuh"

namespace upcycle {

namespace {

namespace routing = gpu::routing;

constexpr int kReduceThreads = 256;         // threads of a statistics block (the tree's width)
constexpr std::size_t kScratchAlign = 256;  // alignment of each array carved from the scratch

// ---- kernels (grid-stride loops around moe_router.cuh) ---------------------------------------

// 1. probabilities[n,:], logsumexp[n], entropy[n]
__global__ void softmax_kernel(const float* __restrict__ logits, int N, int E,
                               float* __restrict__ probabilities, float* __restrict__ logsumexp,
                               double* __restrict__ entropy) {
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N;
         n += static_cast<int>(gridDim.x * blockDim.x)) {
        const int64_t row = static_cast<int64_t>(n) * E;
        routing::softmax_token(logits + row, E, probabilities + row, logsumexp + n, entropy + n);
    }
}

// 2 (topk). Token n's slots s = 0..K-1: slot_expert, candidate slot_weight, one count per
// group g = s·E + e in group_count [K·E], and the claim sort's key and item (the slot index).
__global__ void topk_select_kernel(const float* __restrict__ probabilities, int N, int E, int K,
                                   bool renormalize, bool by_probability,
                                   int32_t* __restrict__ slot_expert,
                                   float* __restrict__ slot_weight,
                                   int32_t* __restrict__ group_count,
                                   uint64_t* __restrict__ claim_keys,
                                   int32_t* __restrict__ claim_items) {
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N;
         n += static_cast<int>(gridDim.x * blockDim.x)) {
        const float* p = probabilities + static_cast<int64_t>(n) * E;
        const int64_t first = static_cast<int64_t>(n) * K;
        int32_t* experts = slot_expert + first;
        routing::select_topk_token(p, E, K, experts);
        routing::slot_weights_token(p, experts, K, renormalize, slot_weight + first);
        for (int r = 0; r < K; ++r) {
            const int e = experts[r];
            atomicAdd(group_count + r * E + e, 1);  // an integer count: order-independent
            claim_keys[first + r] = routing::claim_key(r, e, E, p[e], by_probability);
            claim_items[first + r] = static_cast<int32_t>(first + r);
        }
    }
}

// 2 (topk). group_start and used_before from the group counts: K·E entries, one thread.
__global__ void claim_setup_kernel(const int32_t* __restrict__ group_count, int K, int E,
                                   int capacity, int32_t* __restrict__ group_start,
                                   int32_t* __restrict__ used_before) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        routing::claim_setup(group_count, K, E, capacity, group_start, used_before);
    }
}

// 2 (topk). Position i of the sorted claim order: kept[e·N + n] = 1 if the slot keeps expert e.
__global__ void claim_kernel(const uint64_t* __restrict__ sorted_keys,
                             const int32_t* __restrict__ sorted_items, int64_t M, int N, int E,
                             int K, const int32_t* __restrict__ group_start,
                             const int32_t* __restrict__ used_before, int capacity,
                             int32_t* __restrict__ kept) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M;
         i += stride) {
        const auto group = static_cast<uint32_t>(sorted_keys[i] >> routing::kWordBits);
        if (!routing::claim_keeps(i, group, group_start, used_before, capacity)) continue;
        const int e = static_cast<int>(group % static_cast<uint32_t>(E));
        const int n = sorted_items[i] / K;
        kept[static_cast<int64_t>(e) * N + n] = 1;
    }
}

// 2 (expert choice). Item i = n·E + e: its sort key and itself.
__global__ void choice_keys_kernel(const float* __restrict__ probabilities, int64_t M, int E,
                                   uint64_t* __restrict__ keys, int32_t* __restrict__ items) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M;
         i += stride) {
        keys[i] = routing::choice_key(static_cast<int>(i % E), probabilities[i]);
        items[i] = static_cast<int32_t>(i);
    }
}

// 2 (expert choice). Position j of the sorted items: expert e's segment starts at e·N; the
// first c of it are chosen: kept[e·N + n] = 1.
__global__ void choose_kernel(const int32_t* __restrict__ sorted_items, int64_t M, int N, int E,
                              int capacity, int32_t* __restrict__ kept) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < M;
         j += stride) {
        const int32_t item = sorted_items[j];
        const int e = item % E, n = item / E;
        const int64_t segment = static_cast<int64_t>(e) * N;
        if (j - segment < capacity) kept[segment + n] = 1;
    }
}

// 2 (expert choice). Token n's slots (S = E): chosen experts ascending, then −1; their combine
// weights; one selection count per chosen expert.
__global__ void expert_choice_slots_kernel(const float* __restrict__ probabilities,
                                           const int32_t* __restrict__ kept, int N, int E,
                                           bool renormalize, int32_t* __restrict__ slot_expert,
                                           float* __restrict__ slot_weight,
                                           int32_t* __restrict__ selection_count) {
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N;
         n += static_cast<int>(gridDim.x * blockDim.x)) {
        const int64_t first = static_cast<int64_t>(n) * E;
        int32_t* experts = slot_expert + first;
        const int chosen = routing::expert_choice_slots_token(n, N, E, kept, experts);
        routing::slot_weights_token(probabilities + first, experts, E, renormalize,
                                    slot_weight + first);
        for (int s = 0; s < chosen; ++s) atomicAdd(selection_count + experts[s], 1);
    }
}

// 3. Token n's slot_row, row_token entries, zeroed weights of dropped slots; unrouted[n].
__global__ void assign_rows_kernel(int N, int S, int P, const int32_t* __restrict__ kept,
                                   const int32_t* __restrict__ kept_before,
                                   const int32_t* __restrict__ slot_expert,
                                   int32_t* __restrict__ slot_row, float* __restrict__ slot_weight,
                                   int32_t* __restrict__ row_token,
                                   int32_t* __restrict__ unrouted) {
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N;
         n += static_cast<int>(gridDim.x * blockDim.x)) {
        const int64_t first = static_cast<int64_t>(n) * S;
        const bool routed =
            routing::assign_rows_token(n, N, S, P, kept, kept_before, slot_expert + first,
                                       slot_row + first, slot_weight + first, row_token);
        unrouted[n] = routed ? 0 : 1;
    }
}

// 4. expert_count, expert_offset, load_fraction (one block, threads over the experts).
__global__ void finalize_experts_kernel(int N, int E, int ranks, int P,
                                        const int32_t* __restrict__ kept_before,
                                        const int32_t* __restrict__ selection_count,
                                        int32_t* __restrict__ expert_count,
                                        int32_t* __restrict__ expert_offset,
                                        double* __restrict__ load_fraction) {
    for (int e = static_cast<int>(threadIdx.x); e < E; e += static_cast<int>(blockDim.x)) {
        routing::finalize_expert(e, N, E, ranks, P, kept_before, selection_count, expert_count,
                                 expert_offset, load_fraction);
    }
}

// 4. statistics[b] for block b (kRoutingSums + E blocks of kReduceThreads): Σ_n of the
// token's entropy, lse², unrouted flag, or p[n, b − kRoutingSums]. Thread t sums n = t,
// t + kReduceThreads, … in order, then a fixed tree adds the partial sums: deterministic.
__global__ void statistics_kernel(const double* __restrict__ entropy,
                                  const float* __restrict__ logsumexp,
                                  const int32_t* __restrict__ unrouted,
                                  const float* __restrict__ probabilities, int N, int E,
                                  double* __restrict__ statistics) {
    __shared__ double partial[kReduceThreads];
    const int which = static_cast<int>(blockIdx.x);
    const int t = static_cast<int>(threadIdx.x);
    double sum = 0;
    for (int n = t; n < N; n += kReduceThreads) {
        double term;
        if (which == kEntropySum) {
            term = entropy[n];
        } else if (which == kSquaredLseSum) {
            term = static_cast<double>(logsumexp[n]) * logsumexp[n];
        } else if (which == kUnroutedTokens) {
            term = unrouted[n];
        } else {
            term = probabilities[static_cast<int64_t>(n) * E + (which - kRoutingSums)];
        }
        sum += term;
    }
    partial[t] = sum;
    __syncthreads();
    for (int width = kReduceThreads / 2; width > 0; width /= 2) {
        if (t < width) partial[t] += partial[t + width];
        __syncthreads();
    }
    if (t == 0) statistics[which] = partial[0];
}

// moe_route_backward: dlogits[n,:] for token n; dprob is an [E,N] double scratch.
__global__ void router_gradient_kernel(int N, int E, int S, bool renormalize, double aux_scale,
                                       double z_scale, const float* __restrict__ probabilities,
                                       const float* __restrict__ logsumexp,
                                       const int32_t* __restrict__ slot_expert,
                                       const int32_t* __restrict__ slot_row,
                                       const float* __restrict__ slot_weight,
                                       const float* __restrict__ dslot_weight,
                                       const double* __restrict__ load_fraction,
                                       double* __restrict__ dprob, float* __restrict__ dlogits) {
    for (int n = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); n < N;
         n += static_cast<int>(gridDim.x * blockDim.x)) {
        routing::router_gradient_token(n, N, E, S, renormalize, aux_scale, z_scale, probabilities,
                                       logsumexp, slot_expert, slot_row, slot_weight, dslot_weight,
                                       load_fraction, dprob + n, dlogits);
    }
}

// ---- host helpers ----------------------------------------------------------------------------

// Bits that hold the values 0..count−1 (at least 1, so a radix sort's bit range is never empty).
int bits_for(int64_t count) {
    int bits = 1;
    while ((int64_t{1} << bits) < count) ++bits;
    return bits;
}

// Offsets of several arrays carved from one scratch block, each aligned to kScratchAlign.
class ScratchPlan {
public:
    template <class T>
    std::size_t add(int64_t count) {
        const std::size_t at = bytes_;
        const std::size_t size = static_cast<std::size_t>(count) * sizeof(T);
        bytes_ += (size + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
        return at;
    }
    std::size_t bytes() const { return bytes_; }

private:
    std::size_t bytes_ = 0;
};

template <class T>
T* at(const gpu::DeviceScratch& scratch, std::size_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(scratch.data()) + offset);
}

}  // namespace

void CudaBackend::moe_route(const MoeRouting& r, const float* logits) {
    const int N = r.N, E = r.E, K = r.K, S = r.slots(), P = r.rows_per_expert;
    const int64_t EN = static_cast<int64_t>(E) * N;
    UPCYCLE_ASSERT(E > 0 && N >= 0, "moe_route: needs experts and a token count");
    UPCYCLE_ASSERT(r.expert_choice ? K == 1 : (K >= 1 && K <= E),
                   "moe_route: topk needs 1 ≤ k ≤ E (expert choice: k = 1)");
    UPCYCLE_ASSERT(!r.expert_choice || P > 0, "moe_route: expert choice uses padded rows");
    UPCYCLE_ASSERT(P == 0 || P >= r.capacity, "moe_route: padded rows need P ≥ capacity");
    UPCYCLE_ASSERT(EN + 1 <= INT_MAX && static_cast<int64_t>(N) * S <= INT_MAX,
                   "moe_route: N·E and N·S must fit in int32");
    cudaStream_t stream = state_->stream;
    const int ranks = r.expert_choice ? 1 : K;  // rows of the selection counts
    const int64_t M = r.expert_choice ? EN : static_cast<int64_t>(N) * K;  // items to sort
    const int groups = ranks * E;

    // scratch: per token, per group, kept[E,N] and its scan, the sort's keys and items
    ScratchPlan plan;
    const std::size_t o_entropy = plan.add<double>(N);
    const std::size_t o_unrouted = plan.add<int32_t>(N);
    const std::size_t o_count = plan.add<int32_t>(groups);        // selections per group
    const std::size_t o_group_start = plan.add<int32_t>(groups);  // topk
    const std::size_t o_used_before = plan.add<int32_t>(groups);  // topk
    const std::size_t o_kept = plan.add<int32_t>(EN + 1);
    const std::size_t o_kept_before = plan.add<int32_t>(EN + 1);
    const std::size_t o_keys_in = plan.add<uint64_t>(M);
    const std::size_t o_keys_out = plan.add<uint64_t>(M);
    const std::size_t o_items_in = plan.add<int32_t>(M);
    const std::size_t o_items_out = plan.add<int32_t>(M);
    gpu::DeviceScratch scratch(state_->allocator, plan.bytes());
    double* entropy = at<double>(scratch, o_entropy);
    int32_t* unrouted = at<int32_t>(scratch, o_unrouted);
    int32_t* selection_count = at<int32_t>(scratch, o_count);
    int32_t* group_start = at<int32_t>(scratch, o_group_start);
    int32_t* used_before = at<int32_t>(scratch, o_used_before);
    int32_t* kept = at<int32_t>(scratch, o_kept);
    int32_t* kept_before = at<int32_t>(scratch, o_kept_before);
    uint64_t* keys_in = at<uint64_t>(scratch, o_keys_in);
    uint64_t* keys_out = at<uint64_t>(scratch, o_keys_out);
    int32_t* items_in = at<int32_t>(scratch, o_items_in);
    int32_t* items_out = at<int32_t>(scratch, o_items_out);

    // The sort's bit range: the group (topk: r·E + e; expert choice: e) in the high word; the
    // low word (descending probability) only where it orders the claim.
    const bool sort_by_probability = r.expert_choice || r.probability_priority;
    const int begin_bit = sort_by_probability ? 0 : routing::kWordBits;
    const int end_bit = routing::kWordBits + bits_for(groups);
    // CUB's temporary storage: the larger of the sort's and the scan's
    std::size_t sort_bytes = 0, scan_bytes = 0;
    if (M > 0) {
        CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, keys_out, items_in,
                                                   items_out, static_cast<int>(M), begin_bit,
                                                   end_bit, stream));
    }
    CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, kept, kept_before,
                                             static_cast<int>(EN + 1), stream));
    gpu::DeviceScratch temp(state_->allocator, std::max(sort_bytes, scan_bytes));
    std::size_t temp_bytes = 0;

    CUDA_CHECK(cudaMemsetAsync(selection_count, 0, groups * sizeof(int32_t), stream));
    CUDA_CHECK(
        cudaMemsetAsync(kept, 0, static_cast<std::size_t>(EN + 1) * sizeof(int32_t), stream));
    // every byte 0xff: every row_token −1 (padding) until a kept slot claims the row
    CUDA_CHECK(cudaMemsetAsync(r.row_token, 0xff,
                               static_cast<std::size_t>(r.rows()) * sizeof(int32_t), stream));

    const unsigned token_blocks = gpu::blocks_for(N);
    softmax_kernel<<<token_blocks, gpu::kThreads, 0, stream>>>(logits, N, E, r.probabilities,
                                                               r.logsumexp, entropy);
    CUDA_CHECK(cudaGetLastError());

    if (!r.expert_choice) {
        topk_select_kernel<<<token_blocks, gpu::kThreads, 0, stream>>>(
            r.probabilities, N, E, K, r.renormalize, r.probability_priority, r.slot_expert,
            r.slot_weight, selection_count, keys_in, items_in);
        CUDA_CHECK(cudaGetLastError());
        claim_setup_kernel<<<1, 1, 0, stream>>>(selection_count, K, E, r.capacity, group_start,
                                                used_before);
        CUDA_CHECK(cudaGetLastError());
        if (M > 0) {
            temp_bytes = sort_bytes;
            CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in, keys_out,
                                                       items_in, items_out, static_cast<int>(M),
                                                       begin_bit, end_bit, stream));
            claim_kernel<<<gpu::blocks_for(M), gpu::kThreads, 0, stream>>>(
                keys_out, items_out, M, N, E, K, group_start, used_before, r.capacity, kept);
            CUDA_CHECK(cudaGetLastError());
        }
    } else {
        if (M > 0) {
            choice_keys_kernel<<<gpu::blocks_for(M), gpu::kThreads, 0, stream>>>(
                r.probabilities, M, E, keys_in, items_in);
            CUDA_CHECK(cudaGetLastError());
            temp_bytes = sort_bytes;
            CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in, keys_out,
                                                       items_in, items_out, static_cast<int>(M),
                                                       begin_bit, end_bit, stream));
            choose_kernel<<<gpu::blocks_for(M), gpu::kThreads, 0, stream>>>(items_out, M, N, E,
                                                                            r.capacity, kept);
            CUDA_CHECK(cudaGetLastError());
        }
        expert_choice_slots_kernel<<<token_blocks, gpu::kThreads, 0, stream>>>(
            r.probabilities, kept, N, E, r.renormalize, r.slot_expert, r.slot_weight,
            selection_count);
        CUDA_CHECK(cudaGetLastError());
    }

    temp_bytes = scan_bytes;
    CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, kept, kept_before,
                                             static_cast<int>(EN + 1), stream));
    assign_rows_kernel<<<token_blocks, gpu::kThreads, 0, stream>>>(
        N, S, P, kept, kept_before, r.slot_expert, r.slot_row, r.slot_weight, r.row_token,
        unrouted);
    CUDA_CHECK(cudaGetLastError());
    finalize_experts_kernel<<<1, gpu::kThreads, 0, stream>>>(N, E, ranks, P, kept_before,
                                                             selection_count, r.expert_count,
                                                             r.expert_offset, r.load_fraction);
    CUDA_CHECK(cudaGetLastError());
    statistics_kernel<<<static_cast<unsigned>(kRoutingSums + E), kReduceThreads, 0, stream>>>(
        entropy, r.logsumexp, unrouted, r.probabilities, N, E, r.statistics);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::moe_route_backward(float* dlogits, const float* dslot_weight,
                                     const MoeRouting& r) {
    const int N = r.N, E = r.E, S = r.slots();
    if (N <= 0) return;
    // the reference's expressions, evaluated on the host as there
    const double aux_scale = r.aux_loss_coef * E / static_cast<double>(N);
    const double z_scale = 2.0 * r.z_loss_coef / N;
    gpu::DeviceScratch dprob(state_->allocator, static_cast<std::size_t>(E) *
                                                    static_cast<std::size_t>(N) * sizeof(double));
    router_gradient_kernel<<<gpu::blocks_for(N), gpu::kThreads, 0, state_->stream>>>(
        N, E, S, r.renormalize, aux_scale, z_scale, r.probabilities, r.logsumexp, r.slot_expert,
        r.slot_row, r.slot_weight, dslot_weight, r.load_fraction,
        static_cast<double*>(dprob.data()), dlogits);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
