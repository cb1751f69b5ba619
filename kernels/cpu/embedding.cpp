// Token + position embedding. The backward is deterministic without atomics: threads split
// the channel dimension C, and each walks all tokens in order, so every dwte/dwpe element
// receives its contributions in the same (token) order whatever the thread count.
#include <omp.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

namespace {
// Channel slices handed to threads are multiples of 16 floats (one 64-byte cache line), so
// with aligned rows no two threads write the same line.
constexpr int kChannelGrain = 16;
// Below this many elements a parallel region costs more than it saves.
constexpr std::int64_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                   const float* wpe, int B, int T, int C) {
    const int N = B * T;
#pragma omp parallel for schedule(static) if (static_cast<std::int64_t>(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const int t = n % T;
        const float* te = wte + static_cast<std::size_t>(tokens[n]) * C;
        const float* pe = wpe + static_cast<std::size_t>(t) * C;
        float* o = out + static_cast<std::size_t>(n) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = te[c] + pe[c];
    }
}

void CpuBackend::embedding_backward(float* dwte, float* dwpe, const float* dout,
                                    const int32_t* tokens, int B, int T, int C) {
    const int grains = (C + kChannelGrain - 1) / kChannelGrain;
#pragma omp parallel if (static_cast<std::int64_t>(B) * T * C >= kParallelMin)
    {
        // Static split of channel grains over threads; any split gives the same result.
        const int nthreads = omp_get_num_threads();
        const int tid = omp_get_thread_num();
        const int g0 = static_cast<int>(static_cast<int64_t>(grains) * tid / nthreads);
        const int g1 = static_cast<int>(static_cast<int64_t>(grains) * (tid + 1) / nthreads);
        const int c0 = g0 * kChannelGrain;
        const int c1 = g1 * kChannelGrain < C ? g1 * kChannelGrain : C;
        if (c0 < c1) {
            for (int b = 0; b < B; ++b) {
                for (int t = 0; t < T; ++t) {
                    const std::size_t n = static_cast<std::size_t>(b) * T + t;
                    const float* d = dout + n * C;
                    if (dwte) {
                        float* w = dwte + static_cast<std::size_t>(tokens[n]) * C;
#pragma omp simd
                        for (int c = c0; c < c1; ++c) w[c] += d[c];
                    }
                    if (dwpe) {
                        float* p = dwpe + static_cast<std::size_t>(t) * C;
#pragma omp simd
                        for (int c = c0; c < c1; ++c) p[c] += d[c];
                    }
                }
            }
        }
    }
}

}  // namespace upcycle
