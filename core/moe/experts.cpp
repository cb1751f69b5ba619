#include "core/moe/experts.h"

#include "core/errors.h"

namespace upcycle {

void experts_forward(Backend& be, const ExpertTensors& w, const ExpertGroups& g, const float* x,
                     ExpertActivations act, float* out, int C) {
    const int H = 4 * C;
    be.expert_matmul_forward(act.hidden, x, w.fc_weight, w.stride, w.fc_bias, w.stride, g, C, H);
    be.gelu_forward(act.hidden_gelu, act.hidden, static_cast<std::size_t>(g.rows) * H);
    be.expert_matmul_forward(out, act.hidden_gelu, w.proj_weight, w.stride, w.proj_bias, w.stride,
                             g, H, C);
}

void experts_backward(Backend& be, const ExpertTensors& w, const ExpertTensors& grad,
                      const ExpertGroups& g, const float* x, ExpertActivations act,
                      const float* dout, float* dx, float* dhidden_gelu, float* dhidden, int C) {
    const int H = 4 * C;
    const std::size_t hidden = static_cast<std::size_t>(g.rows) * H;
    be.zero(dhidden_gelu, hidden * sizeof(float));
    be.zero(dhidden, hidden * sizeof(float));
    // the backend's ops take one stride for a weight and its gradient
    UPCYCLE_ASSERT(grad.stride == w.stride, "expert gradients must mirror the parameters' layout");
    be.expert_matmul_backward(dhidden_gelu, grad.proj_weight, grad.proj_bias, dout,
                              act.hidden_gelu, w.proj_weight, w.stride, w.stride, g, H, C);
    be.gelu_backward(dhidden, act.hidden, dhidden_gelu, hidden);
    be.expert_matmul_backward(dx, grad.fc_weight, grad.fc_bias, dhidden, x, w.fc_weight,
                              w.stride, w.stride, g, C, H);
}

}  // namespace upcycle
