// LayerNorm over the last dimension, eps 1e-5, biased variance (as PyTorch).
// Forward: two passes per row (mean, then centred variance) in float with vectorised
// reductions. Backward (as PyTorch), with x̂ = (x - mean)·rstd and g = dout·weight:
//   dinp += rstd · (g - mean(g) - x̂ · mean(g·x̂))
//   dweight += Σ_n dout·x̂,  dbias += Σ_n dout
// dweight/dbias are deterministic: rows are cut into fixed chunks of kRowChunk (independent
// of the thread count), each chunk sums its rows in order into its own partial, and the
// partials are added chunk by chunk, in order, in a second pass split over channels.
#include <omp.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/thread_buffer.h"

namespace upcycle {

namespace {
constexpr float kEps = 1e-5f;
// Rows per partial sum of dweight/dbias.
constexpr int kRowChunk = 32;
// Channel slices handed to threads are whole cache lines.
constexpr int kChannelGrain = 16;
// Below this many elements a parallel region costs more than it saves.
constexpr std::int64_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                   const float* weight, const float* bias, int N, int C) {
    const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static) if (static_cast <std::int64_t>(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const float* x = inp + static_cast<std::size_t>(n) * C;
        float* o = out + static_cast<std::size_t>(n) * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; ++c) sum += x[c];
        const float mu = sum * inv_c;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; ++c) {
            const float d = x[c] - mu;
            sq += d * d;
        }
        const float rs = 1.0f / std::sqrt(sq * inv_c + kEps);
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = (x[c] - mu) * rs * weight[c] + bias[c];
        if (mean) mean[n] = mu;
        if (rstd) rstd[n] = rs;
    }
}

void CpuBackend::layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                    const float* inp, const float* weight, const float* mean,
                                    const float* rstd, int N, int C) {
    const bool param_grads = dweight != nullptr || dbias != nullptr;
    const int chunks = (N + kRowChunk - 1) / kRowChunk;
    // Per-chunk partials [chunks][2][C]: dweight then dbias. Kept across calls by the
    // calling thread; shared with the worker threads of the parallel regions below.
    thread_local cpu::ThreadBuffer partials;
    float* part = param_grads ? partials.get(static_cast<std::size_t>(chunks) * 2 * C) : nullptr;
    const float inv_c = 1.0f / static_cast<float>(C);

#pragma omp parallel for schedule(static) if (static_cast <std::int64_t>(N) * C >= kParallelMin)
    for (int chunk = 0; chunk < chunks; ++chunk) {
        float* pw = param_grads ? part + static_cast<std::size_t>(chunk) * 2 * C : nullptr;
        float* pb = param_grads ? pw + C : nullptr;
        if (param_grads) {
            for (int c = 0; c < 2 * C; ++c) pw[c] = 0.0f;
        }
        const int r1 = (chunk + 1) * kRowChunk < N ? (chunk + 1) * kRowChunk : N;
        for (int n = chunk * kRowChunk; n < r1; ++n) {
            const float* x = inp + static_cast<std::size_t>(n) * C;
            const float* dy = dout + static_cast<std::size_t>(n) * C;
            const float mu = mean[n];
            const float rs = rstd[n];
            if (param_grads) {
#pragma omp simd
                for (int c = 0; c < C; ++c) {
                    pw[c] += dy[c] * (x[c] - mu) * rs;
                    pb[c] += dy[c];
                }
            }
            if (dinp) {
                float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
                for (int c = 0; c < C; ++c) {
                    const float g = dy[c] * weight[c];
                    sum_g += g;
                    sum_gx += g * (x[c] - mu) * rs;
                }
                const float mean_g = sum_g * inv_c;
                const float mean_gx = sum_gx * inv_c;
                float* dx = dinp + static_cast<std::size_t>(n) * C;
#pragma omp simd
                for (int c = 0; c < C; ++c) {
                    const float xhat = (x[c] - mu) * rs;
                    dx[c] += rs * (dy[c] * weight[c] - mean_g - xhat * mean_gx);
                }
            }
        }
    }

    if (!param_grads) return;
    const int grains = (C + kChannelGrain - 1) / kChannelGrain;
#pragma omp parallel if (static_cast <std::int64_t>(N) * C >= kParallelMin)
    {
        const int nthreads = omp_get_num_threads();
        const int tid = omp_get_thread_num();
        const int g0 = static_cast<int>(static_cast<std::int64_t>(grains) * tid / nthreads);
        const int g1 = static_cast<int>(static_cast<std::int64_t>(grains) * (tid + 1) / nthreads);
        const int c0 = g0 * kChannelGrain;
        const int c1 = g1 * kChannelGrain < C ? g1 * kChannelGrain : C;
        for (int chunk = 0; chunk < chunks; ++chunk) {
            const float* pw = part + static_cast<std::size_t>(chunk) * 2 * C;
            const float* pb = pw + C;
            if (dweight) {
#pragma omp simd
                for (int c = c0; c < c1; ++c) dweight[c] += pw[c];
            }
            if (dbias) {
#pragma omp simd
                for (int c = c0; c < c1; ++c) dbias[c] += pb[c];
            }
        }
    }
}

}  // namespace upcycle
