// Mixture-of-Experts dispatch (gather) and combine (weighted scatter), forward and backward. Every loop runs over destination rows, each written by exactly one
// iteration, so results are deterministic without atomics.
#include <algorithm>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

void CpuBackend::gather_rows(float* out, const float* inp, const int32_t* row_token, int rows,
                             int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) {
        float* dst = out + static_cast<std::size_t>(r) * C;
        if (row_token[r] < 0) {  // padding
            std::fill(dst, dst + C, 0.0f);
            continue;
        }
        const float* src = inp + static_cast<std::size_t>(row_token[r]) * C;
        std::copy(src, src + C, dst);
    }
}

void CpuBackend::gather_rows_backward(float* dinp, const float* dout, const int32_t* slot_row,
                                      int N, int S, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        float* dst = dinp + static_cast<std::size_t>(n) * C;
        for (int s = 0; s < S; ++s) {
            const int32_t row = slot_row[static_cast<std::size_t>(n) * S + s];
            if (row < 0) continue;
            const float* src = dout + static_cast<std::size_t>(row) * C;
            for (int c = 0; c < C; ++c) dst[c] += src[c];
        }
    }
}

void CpuBackend::combine_rows(float* out, const float* src, const float* slot_weight,
                              const int32_t* slot_row, int N, int S, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        float* dst = out + static_cast<std::size_t>(n) * C;
        std::fill(dst, dst + C, 0.0f);
        for (int s = 0; s < S; ++s) {
            const std::size_t slot = static_cast<std::size_t>(n) * S + s;
            if (slot_row[slot] < 0) continue;
            const float w = slot_weight[slot];
            const float* row = src + static_cast<std::size_t>(slot_row[slot]) * C;
            for (int c = 0; c < C; ++c) dst[c] += w * row[c];
        }
    }
}

void CpuBackend::combine_rows_backward(float* dsrc, float* dslot_weight, const float* dout,
                                       const float* src, const float* slot_weight,
                                       const int32_t* slot_row, int N, int S, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        const float* g = dout + static_cast<std::size_t>(n) * C;
        for (int s = 0; s < S; ++s) {
            const std::size_t slot = static_cast<std::size_t>(n) * S + s;
            if (slot_row[slot] < 0) continue;
            const std::size_t row = static_cast<std::size_t>(slot_row[slot]) * C;
            const float w = slot_weight[slot];
            float* d = dsrc + row;
            const float* x = src + row;
            double dot = 0.0;
            for (int c = 0; c < C; ++c) {
                d[c] += w * g[c];
                dot += static_cast<double>(g[c]) * x[c];
            }
            dslot_weight[slot] += static_cast<float>(dot);
        }
    }
}

}  // namespace upcycle
