// Mixture-of-Experts dispatch (gather) and combine (weighted scatter), forward and backward,
// on the GPU, in the slot form of core/backend.h (slot_row[N,S], −1 = no row; row_token[R],
// −1 = padding). Specification: kernels/cpu/moe_dispatch.cpp.
//
// Every kernel walks destination elements, each written by exactly one thread, and sums in
// the CPU's order, so results are deterministic without atomics:
//  - gather_rows: one thread per (row, channel); padding rows get zeros.
//  - gather_rows_backward, combine_rows: one thread per (token, channel); it walks the
//    token's S slots in slot order, skipping −1, and adds into one register, as the CPU's
//    inner loop does.
//  - combine_rows_backward: one block per token n, one warp per slot s of that token.
//    dsrc[slot_row[n,s],:] is written by that warp alone because every row is carried by at
//    most one slot (the routing's invariant, stated in core/backend.h; the CPU spec relies on
//    it too: its parallel loop over tokens would race otherwise). dslot_weight[n,s] is a dot
//    product over C: each lane sums its strided channels in double, then a fixed shuffle
//    tree adds the 32 lane sums, so the result does not depend on scheduling. A slot with
//    slot_row −1 is skipped by its whole warp (the row is the same for all lanes), so the
//    shuffles always run with every lane present.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

using gpu::kFullMask;
using gpu::kWarpSize;

constexpr int kWarpsPerBlock = 4;  // combine_rows_backward: slots in flight per token

// out[r,c] = inp[row_token[r],c], or 0 where row_token[r] = −1 (padding)
__global__ void gather_rows_kernel(float* __restrict__ out, const float* __restrict__ inp,
                                   const int32_t* __restrict__ row_token, int R, int C) {
    const std::int64_t total = static_cast<std::int64_t>(R) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t r = i / C, c = i % C;
        const int32_t token = row_token[r];
        out[i] = token < 0 ? 0.0f : inp[static_cast<std::int64_t>(token) * C + c];
    }
}

// dinp[n,c] += Σ_{s < S, slot_row[n,s] ≥ 0, in slot order} dout[slot_row[n,s],c]
__global__ void gather_rows_backward_kernel(float* __restrict__ dinp,
                                            const float* __restrict__ dout,
                                            const int32_t* __restrict__ slot_row, int N, int S,
                                            int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        const int32_t* rows = slot_row + n * S;
        float acc = dinp[i];
        for (int s = 0; s < S; ++s) {
            const int32_t row = rows[s];
            if (row >= 0) acc += dout[static_cast<std::int64_t>(row) * C + c];
        }
        dinp[i] = acc;
    }
}

// out[n,c] = Σ_{s: slot_row[n,s] ≥ 0, in slot order} slot_weight[n,s]·src[slot_row[n,s],c]
// (0 for a token with no kept slot)
__global__ void combine_rows_kernel(float* __restrict__ out, const float* __restrict__ src,
                                    const float* __restrict__ slot_weight,
                                    const int32_t* __restrict__ slot_row, int N, int S, int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        const int32_t* rows = slot_row + n * S;
        const float* weights = slot_weight + n * S;
        float acc = 0.0f;
        for (int s = 0; s < S; ++s) {
            const int32_t row = rows[s];
            if (row >= 0) acc += weights[s] * src[static_cast<std::int64_t>(row) * C + c];
        }
        out[i] = acc;
    }
}

// One block per token n; warp w of the block takes the token's slots s = w, w +
// kWarpsPerBlock, …; lane l takes channels c = l, l + 32, ….  For each kept slot (row =
// slot_row[n,s] ≥ 0):
//   dsrc[row,c] += slot_weight[n,s]·dout[n,c]
//   dslot_weight[n,s] += Σ_c dout[n,c]·src[row,c]   (double, fixed reduction tree)
__global__ void combine_rows_backward_kernel(float* __restrict__ dsrc,
                                             float* __restrict__ dslot_weight,
                                             const float* __restrict__ dout,
                                             const float* __restrict__ src,
                                             const float* __restrict__ slot_weight,
                                             const int32_t* __restrict__ slot_row, int S,
                                             int C) {
    const std::int64_t n = blockIdx.x;
    const int warp = threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    const float* g = dout + n * C;
    for (int s = warp; s < S; s += kWarpsPerBlock) {
        const std::int64_t slot = n * S + s;
        const int32_t row_index = slot_row[slot];
        if (row_index < 0) continue;  // uniform across the warp
        const std::int64_t row = static_cast<std::int64_t>(row_index) * C;
        const float w = slot_weight[slot];
        float* d = dsrc + row;
        const float* x = src + row;
        double dot = 0.0;
        for (int c = lane; c < C; c += kWarpSize) {
            d[c] += w * g[c];
            dot += static_cast<double>(g[c]) * static_cast<double>(x[c]);
        }
        // fixed-order tree over the 32 lanes: lane l adds lane l + offset
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
            dot += __shfl_down_sync(kFullMask, dot, offset);
        }
        if (lane == 0) dslot_weight[slot] += static_cast<float>(dot);
    }
}

}  // namespace

void CudaBackend::gather_rows(float* out, const float* inp, const int32_t* row_token, int rows,
                              int C) {
    const std::int64_t total = static_cast<std::int64_t>(rows) * C;
    if (total <= 0) return;
    gather_rows_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, inp, row_token, rows, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::gather_rows_backward(float* dinp, const float* dout, const int32_t* slot_row,
                                       int N, int S, int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    if (total <= 0 || S <= 0) return;
    gather_rows_backward_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        dinp, dout, slot_row, N, S, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::combine_rows(float* out, const float* src, const float* slot_weight,
                               const int32_t* slot_row, int N, int S, int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    if (total <= 0) return;
    // S = 0 still runs: every token has no kept slot and gets zeros, as on the CPU.
    combine_rows_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, src, slot_weight, slot_row, N, S < 0 ? 0 : S, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::combine_rows_backward(float* dsrc, float* dslot_weight, const float* dout,
                                        const float* src, const float* slot_weight,
                                        const int32_t* slot_row, int N, int S, int C) {
    if (N <= 0 || S <= 0) return;
    // C == 0 still runs: dslot_weight += 0 on kept slots, as on the CPU.
    combine_rows_backward_kernel<<<static_cast<unsigned>(N), kWarpsPerBlock * kWarpSize, 0,
                                   state_->stream>>>(dsrc, dslot_weight, dout, src, slot_weight,
                                                     slot_row, S, C);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
