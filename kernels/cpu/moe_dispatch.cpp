// Mixture-of-Experts dispatch (gather) and combine (weighted scatter), forward and backward.
// Every loop runs over destination rows, each written by exactly one iteration, so results
// are deterministic without atomics.
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

void CpuBackend::gather_rows(float* out, const float* inp, const int32_t* row_token, int R,
                             int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; ++r) {
        const float* src = inp + static_cast<std::size_t>(row_token[r]) * C;
        float* dst = out + static_cast<std::size_t>(r) * C;
        for (int c = 0; c < C; ++c) dst[c] = src[c];
    }
}

void CpuBackend::gather_rows_backward(float* dinp, const float* dout, const int32_t* token_offsets,
                                      const int32_t* token_rows, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        float* dst = dinp + static_cast<std::size_t>(n) * C;
        for (int j = token_offsets[n]; j < token_offsets[n + 1]; ++j) {
            const float* src = dout + static_cast<std::size_t>(token_rows[j]) * C;
            for (int c = 0; c < C; ++c) dst[c] += src[c];
        }
    }
}

void CpuBackend::combine_rows(float* out, const float* src, const float* weights,
                              const int32_t* token_offsets, const int32_t* token_rows, int N,
                              int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        float* dst = out + static_cast<std::size_t>(n) * C;
        for (int c = 0; c < C; ++c) dst[c] = 0.0f;
        for (int j = token_offsets[n]; j < token_offsets[n + 1]; ++j) {
            const float w = weights[j];
            const float* row = src + static_cast<std::size_t>(token_rows[j]) * C;
            for (int c = 0; c < C; ++c) dst[c] += w * row[c];
        }
    }
}

void CpuBackend::combine_rows_backward(float* dsrc, float* dweights, const float* dout,
                                       const float* src, const float* weights,
                                       const int32_t* token_offsets, const int32_t* token_rows,
                                       int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        const float* g = dout + static_cast<std::size_t>(n) * C;
        for (int j = token_offsets[n]; j < token_offsets[n + 1]; ++j) {
            const std::size_t row = static_cast<std::size_t>(token_rows[j]) * C;
            const float w = weights[j];
            float* d = dsrc + row;
            const float* s = src + row;
            double dot = 0.0;
            for (int c = 0; c < C; ++c) {
                d[c] += w * g[c];
                dot += static_cast<double>(g[c]) * s[c];
            }
            dweights[j] += static_cast<float>(dot);
        }
    }
}

}  // namespace upcycle
