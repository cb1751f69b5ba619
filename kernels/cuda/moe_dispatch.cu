// Mixture-of-Experts dispatch (gather) and combine (weighted scatter), forward and backward,
// on the GPU. Specification: kernels/cpu/moe_dispatch.cpp.
//
// Every kernel walks destination elements, each written by exactly one thread, and sums in
// the CPU's order, so results are deterministic without atomics:
//  - gather_rows, gather_rows_backward, combine_rows: one thread per (destination row,
//    channel); the backward and the combine sum a token's rows in the order the token-major
//    index lists them, as the CPU does.
//  - combine_rows_backward: one block per token n, one warp per assignment j of that token.
//    dsrc[token_rows[j],:] is written by that warp alone because every row r < R appears
//    exactly once in token_rows (core/moe/dispatch.cpp builds token_rows as a permutation of
//    the rows: each kept (token, expert) assignment gets its own row). The CPU spec relies on
//    the same fact (its parallel loop over tokens would race otherwise). dweights[j] is a dot
//    product over C: each lane sums its strided channels in double, then a fixed shuffle tree
//    adds the 32 lane sums, so the result does not depend on scheduling.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

using gpu::kFullMask;
using gpu::kWarpSize;

constexpr int kWarpsPerBlock = 4;  // combine_rows_backward: assignments in flight per token

// out[r,c] = inp[row_token[r],c]
__global__ void gather_rows_kernel(float* __restrict__ out, const float* __restrict__ inp,
                                   const int32_t* __restrict__ row_token, int R, int C) {
    const std::int64_t total = static_cast<std::int64_t>(R) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t r = i / C, c = i % C;
        out[i] = inp[static_cast<std::int64_t>(row_token[r]) * C + c];
    }
}

// dinp[n,c] += Σ_{j of token n, in order} dout[token_rows[j],c]
__global__ void gather_rows_backward_kernel(float* __restrict__ dinp,
                                            const float* __restrict__ dout,
                                            const int32_t* __restrict__ token_offsets,
                                            const int32_t* __restrict__ token_rows, int N,
                                            int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        float acc = dinp[i];
        for (int j = token_offsets[n]; j < token_offsets[n + 1]; ++j) {
            acc += dout[static_cast<std::int64_t>(token_rows[j]) * C + c];
        }
        dinp[i] = acc;
    }
}

// out[n,c] = Σ_{j of token n, in order} weights[j]·src[token_rows[j],c]  (0 with no rows)
__global__ void combine_rows_kernel(float* __restrict__ out, const float* __restrict__ src,
                                    const float* __restrict__ weights,
                                    const int32_t* __restrict__ token_offsets,
                                    const int32_t* __restrict__ token_rows, int N, int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        float acc = 0.0f;
        for (int j = token_offsets[n]; j < token_offsets[n + 1]; ++j) {
            acc += weights[j] * src[static_cast<std::int64_t>(token_rows[j]) * C + c];
        }
        out[i] = acc;
    }
}

// One block per token n; warp w of the block takes the token's assignments j = begin + w,
// begin + w + kWarpsPerBlock, …; lane l takes channels c = l, l + 32, ….
//   dsrc[token_rows[j],c] += weights[j]·dout[n,c]
//   dweights[j] += Σ_c dout[n,c]·src[token_rows[j],c]   (double, fixed reduction tree)
__global__ void combine_rows_backward_kernel(float* __restrict__ dsrc,
                                             float* __restrict__ dweights,
                                             const float* __restrict__ dout,
                                             const float* __restrict__ src,
                                             const float* __restrict__ weights,
                                             const int32_t* __restrict__ token_offsets,
                                             const int32_t* __restrict__ token_rows, int C) {
    const int n = blockIdx.x;
    const int warp = threadIdx.x / kWarpSize;
    const int lane = threadIdx.x % kWarpSize;
    const float* g = dout + static_cast<std::int64_t>(n) * C;
    const int begin = token_offsets[n], end = token_offsets[n + 1];
    for (int j = begin + warp; j < end; j += kWarpsPerBlock) {
        const std::int64_t row = static_cast<std::int64_t>(token_rows[j]) * C;
        const float w = weights[j];
        float* d = dsrc + row;
        const float* s = src + row;
        double dot = 0.0;
        for (int c = lane; c < C; c += kWarpSize) {
            d[c] += w * g[c];
            dot += static_cast<double>(g[c]) * static_cast<double>(s[c]);
        }
        // fixed-order tree over the 32 lanes: lane l adds lane l + offset
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
            dot += __shfl_down_sync(kFullMask, dot, offset);
        }
        if (lane == 0) dweights[j] += static_cast<float>(dot);
    }
}

}  // namespace

void CudaBackend::gather_rows(float* out, const float* inp, const int32_t* row_token, int R,
                              int C) {
    const std::int64_t total = static_cast<std::int64_t>(R) * C;
    if (total <= 0) return;
    gather_rows_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, inp, row_token, R, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::gather_rows_backward(float* dinp, const float* dout,
                                       const int32_t* token_offsets, const int32_t* token_rows,
                                       int N, int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    if (total <= 0) return;
    gather_rows_backward_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        dinp, dout, token_offsets, token_rows, N, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::combine_rows(float* out, const float* src, const float* weights,
                               const int32_t* token_offsets, const int32_t* token_rows, int N,
                               int C) {
    const std::int64_t total = static_cast<std::int64_t>(N) * C;
    if (total <= 0) return;
    combine_rows_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, src, weights, token_offsets, token_rows, N, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::combine_rows_backward(float* dsrc, float* dweights, const float* dout,
                                        const float* src, const float* weights,
                                        const int32_t* token_offsets, const int32_t* token_rows,
                                        int N, int C) {
    if (N <= 0) return;
    // C == 0 still runs: dweights[j] += 0, as on the CPU.
    combine_rows_backward_kernel<<<static_cast<unsigned>(N), kWarpsPerBlock * kWarpSize, 0,
                                   state_->stream>>>(dsrc, dweights, dout, src, weights,
                                                     token_offsets, token_rows, C);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
