#include "core/moe/experts.h"

namespace upcycle {

void experts_forward(Backend& be, const ExpertTensors& w, const std::vector<int32_t>& expert_offsets,
                     const float* x, ExpertActivations act, float* out, int C) {
    const int E = static_cast<int>(w.fc_weight.size());
    const std::size_t H = 4 * static_cast<std::size_t>(C);
    for (int e = 0; e < E; ++e) {
        const int first = expert_offsets[e];
        const int M = expert_offsets[e + 1] - first;
        if (M == 0) continue;
        float* hidden = act.hidden + first * H;
        float* hidden_gelu = act.hidden_gelu + first * H;
        be.matmul_forward(hidden, x + static_cast<std::size_t>(first) * C, w.fc_weight[e],
                          w.fc_bias[e], M, C, 4 * C);
        be.gelu_forward(hidden_gelu, hidden, M * H);
        be.matmul_forward(out + static_cast<std::size_t>(first) * C, hidden_gelu, w.proj_weight[e],
                          w.proj_bias[e], M, 4 * C, C);
    }
}

void experts_backward(Backend& be, const ExpertTensors& w, ExpertTensors& grad,
                      const std::vector<int32_t>& expert_offsets, const float* x,
                      ExpertActivations act, const float* dout, float* dx, float* dhidden_gelu,
                      float* dhidden, int C) {
    const int E = static_cast<int>(w.fc_weight.size());
    const std::size_t H = 4 * static_cast<std::size_t>(C);
    const std::size_t R = static_cast<std::size_t>(expert_offsets[E]);
    be.zero(dhidden_gelu, R * H * sizeof(float));
    be.zero(dhidden, R * H * sizeof(float));
    for (int e = 0; e < E; ++e) {
        const int first = expert_offsets[e];
        const int M = expert_offsets[e + 1] - first;
        if (M == 0) continue;
        const std::size_t row_c = static_cast<std::size_t>(first) * C;
        const std::size_t row_h = first * H;
        be.matmul_backward(dhidden_gelu + row_h, grad.proj_weight[e], grad.proj_bias[e],
                           dout + row_c, act.hidden_gelu + row_h, w.proj_weight[e], M, 4 * C, C);
        be.gelu_backward(dhidden + row_h, act.hidden + row_h, dhidden_gelu + row_h, M * H);
        be.matmul_backward(dx + row_c, grad.fc_weight[e], grad.fc_bias[e], dhidden + row_h,
                           x + row_c, w.fc_weight[e], M, C, 4 * C);
    }
}

}  // namespace upcycle
