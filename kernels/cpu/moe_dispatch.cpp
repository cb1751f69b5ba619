// Mixture-of-Experts dispatch (gather), combine (weighted scatter) and the experts' GEMMs,
// forward and backward. Every loop runs over destination rows, each written by exactly one
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

// Each expert's rows through matmul_forward (so bf16 precision applies as everywhere); the
// CPU reads the counts directly and leaves padding out of the products, writing it as zeros.
void CpuBackend::expert_matmul_forward(float* out, const float* inp, const float* weight,
                                       std::size_t weight_stride, const float* bias,
                                       std::size_t bias_stride, const ExpertGroups& g, int K,
                                       int N) {
    auto zero_rows = [&](std::size_t from, std::size_t to) {
        std::fill(out + from * N, out + to * N, 0.0f);
    };
    if (g.rows_per_expert > 0) {  // each block's tail
        for (int e = 0; e < g.E; ++e) zero_rows(g.offset[e] + g.count[e], g.offset[e + 1]);
    } else {  // the rows after the last expert's
        zero_rows(g.offset[g.E], g.rows);
    }
    for (int e = 0; e < g.E; ++e) {
        const int M = g.count[e];
        if (M == 0) continue;
        const std::size_t first = static_cast<std::size_t>(g.offset[e]);
        matmul_forward(out + first * N, inp + first * K, weight + e * weight_stride,
                       bias ? bias + e * bias_stride : nullptr, M, K, N);
    }
}

void CpuBackend::expert_matmul_backward(float* dinp, float* dweight, float* dbias,
                                        const float* dout, const float* inp, const float* weight,
                                        std::size_t weight_stride, std::size_t bias_stride,
                                        const ExpertGroups& g, int K, int N) {
    for (int e = 0; e < g.E; ++e) {
        const int M = g.count[e];
        if (M == 0) continue;
        const std::size_t first = static_cast<std::size_t>(g.offset[e]);
        matmul_backward(dinp ? dinp + first * K : nullptr, dweight + e * weight_stride,
                        dbias ? dbias + e * bias_stride : nullptr, dout + first * N,
                        inp + first * K, weight + e * weight_stride, M, K, N);
    }
}

}  // namespace upcycle
