// The experts' linear layers: one weight per expert at a fixed stride applied to the rows each
// expert owns (rows grouped by expert, see MoeRouting in core/backend.h), forward and backward.
#include <algorithm>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

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
