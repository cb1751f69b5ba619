// LayerNorm over the last dimension on the GPU, eps 1e-5, biased variance (as PyTorch).
// Specification: kernels/cpu/layernorm.cpp.
//
// Forward: one warp per row. Each lane sums its strided channels, a butterfly shuffle adds
// the 32 lane sums (every lane ends with the same bits: float addition is commutative);
// mean first, then the centred variance, then the output.
// Backward (as PyTorch), with x̂ = (x - mean)·rstd and g = dout·weight:
//   dinp += rstd · (g - mean(g) - x̂ · mean(g·x̂))        one warp per row, as the forward
//   dweight += Σ_n dout·x̂,  dbias += Σ_n dout            two kernels, no atomics:
//     1. one thread per (chunk of kRowChunk rows, channel) sums its rows in order into its
//        own partial (scratch [chunks][2][C]);
//     2. one thread per channel adds the partials chunk by chunk, in order, into
//        dweight/dbias. The CPU uses the same chunking and order.
// Every result is written by exactly one thread in an order fixed by the shapes alone.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

using gpu::DeviceScratch;
using gpu::kFullMask;
using gpu::kWarpSize;
using gpu::warp_sum;

constexpr float kEps = 1e-5f;
// Rows per block of the per-row kernels (one warp each).
constexpr int kRowsPerBlock = 8;
constexpr int kRowThreads = kRowsPerBlock * kWarpSize;
// Rows per partial sum of dweight/dbias (as the CPU).
constexpr int kRowChunk = 32;
// Threads (channels) per block of the parameter-gradient kernels.
constexpr int kChannelThreads = 128;

// out[n,:] = (x - mean)·rstd·weight + bias; mean[n], rstd[n] saved (null = skipped).
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int n = static_cast<int>(blockIdx.x) * kRowsPerBlock +
                  static_cast<int>(threadIdx.x) / kWarpSize;
    if (n >= N) return;  // the whole warp leaves together
    const float* x = inp + static_cast<std::size_t>(n) * C;
    float* o = out + static_cast<std::size_t>(n) * C;
    const float inv_c = 1.0f / static_cast<float>(C);

    float sum = 0.0f;
    for (int c = lane; c < C; c += kWarpSize) sum += x[c];
    const float mu = warp_sum(sum) * inv_c;
    float sq = 0.0f;
    for (int c = lane; c < C; c += kWarpSize) {
        const float d = x[c] - mu;
        sq += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(sq) * inv_c + kEps);
    for (int c = lane; c < C; c += kWarpSize) o[c] = (x[c] - mu) * rs * weight[c] + bias[c];
    if (lane == 0) {
        if (mean) mean[n] = mu;
        if (rstd) rstd[n] = rs;
    }
}

// dinp[n,:] += rstd·(g - mean(g) - x̂·mean(g·x̂)),  g = dout·weight
__global__ void layernorm_backward_input_kernel(float* dinp, const float* dout, const float* inp,
                                                const float* weight, const float* mean,
                                                const float* rstd, int N, int C) {
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int n = static_cast<int>(blockIdx.x) * kRowsPerBlock +
                  static_cast<int>(threadIdx.x) / kWarpSize;
    if (n >= N) return;  // the whole warp leaves together
    const std::size_t row = static_cast<std::size_t>(n) * C;
    const float* x = inp + row;
    const float* dy = dout + row;
    float* dx = dinp + row;
    const float mu = mean[n];
    const float rs = rstd[n];
    const float inv_c = 1.0f / static_cast<float>(C);

    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int c = lane; c < C; c += kWarpSize) {
        const float g = dy[c] * weight[c];
        sum_g += g;
        sum_gx += g * (x[c] - mu) * rs;
    }
    const float mean_g = warp_sum(sum_g) * inv_c;
    const float mean_gx = warp_sum(sum_gx) * inv_c;
    for (int c = lane; c < C; c += kWarpSize) {
        const float xhat = (x[c] - mu) * rs;
        dx[c] += rs * (dy[c] * weight[c] - mean_g - xhat * mean_gx);
    }
}

// partials[chunk][0][c] = Σ_{n in chunk, in order} dout·x̂;  partials[chunk][1][c] = Σ dout
// Grid: x = chunk, y = block of kChannelThreads channels.
__global__ void layernorm_param_partials_kernel(float* partials, const float* dout,
                                                const float* inp, const float* mean,
                                                const float* rstd, int N, int C) {
    const int chunk = static_cast<int>(blockIdx.x);
    const int c = static_cast<int>(blockIdx.y) * kChannelThreads + static_cast<int>(threadIdx.x);
    if (c >= C) return;
    const int r0 = chunk * kRowChunk;
    const int r1 = r0 + kRowChunk < N ? r0 + kRowChunk : N;
    float pw = 0.0f, pb = 0.0f;
    for (int n = r0; n < r1; ++n) {
        const std::size_t i = static_cast<std::size_t>(n) * C + c;
        const float dy = dout[i];
        pw += dy * (inp[i] - mean[n]) * rstd[n];
        pb += dy;
    }
    float* pw_out = partials + static_cast<std::size_t>(chunk) * 2 * C;
    pw_out[c] = pw;
    pw_out[C + c] = pb;
}

// dweight[c] += partials[0][0][c] + partials[1][0][c] + ... (chunk order); dbias likewise.
__global__ void layernorm_param_reduce_kernel(float* dweight, float* dbias, const float* partials,
                                              int chunks, int C) {
    const int c = static_cast<int>(blockIdx.x) * kChannelThreads + static_cast<int>(threadIdx.x);
    if (c >= C) return;
    if (dweight) {
        float acc = dweight[c];
        for (int chunk = 0; chunk < chunks; ++chunk) {
            acc += partials[static_cast<std::size_t>(chunk) * 2 * C + c];
        }
        dweight[c] = acc;
    }
    if (dbias) {
        float acc = dbias[c];
        for (int chunk = 0; chunk < chunks; ++chunk) {
            acc += partials[static_cast<std::size_t>(chunk) * 2 * C + C + c];
        }
        dbias[c] = acc;
    }
}

}  // namespace

void CudaBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                    const float* weight, const float* bias, int N, int C) {
    if (N <= 0 || C <= 0) return;
    const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
    layernorm_forward_kernel<<<blocks, kRowThreads, 0, state_->stream>>>(out, mean, rstd, inp,
                                                                        weight, bias, N, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::layernorm_backward(float* dinp, float* dweight, float* dbias,
                                     const float* dout, const float* inp, const float* weight,
                                     const float* mean, const float* rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (dinp) {
        const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
        layernorm_backward_input_kernel<<<blocks, kRowThreads, 0, state_->stream>>>(
            dinp, dout, inp, weight, mean, rstd, N, C);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dweight == nullptr && dbias == nullptr) return;

    const int chunks = (N + kRowChunk - 1) / kRowChunk;
    const int channel_blocks = (C + kChannelThreads - 1) / kChannelThreads;
    DeviceScratch partials(state_->allocator,
                           static_cast<std::size_t>(chunks) * 2 * C * sizeof(float));
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(channel_blocks));
    layernorm_param_partials_kernel<<<grid, kChannelThreads, 0, state_->stream>>>(
        partials.floats(), dout, inp, mean, rstd, N, C);
    CUDA_CHECK(cudaGetLastError());
    layernorm_param_reduce_kernel<<<static_cast<unsigned>(channel_blocks), kChannelThreads, 0,
                                    state_->stream>>>(dweight, dbias, partials.floats(), chunks,
                                                      C);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
