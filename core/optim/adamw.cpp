#include "core/optim/adamw.h"

#include <cmath>

namespace upcycle {

AdamW::AdamW(Backend& backend, std::size_t num_parameters)
    : backend_(&backend),
      m_(Tensor::zeros(backend, {static_cast<int64_t>(num_parameters)})),
      v_(Tensor::zeros(backend, {static_cast<int64_t>(num_parameters)})) {}

void AdamW::reset() {
    m_.set_zero();
    v_.set_zero();
    step_ = 0;
}

OptimizerStepStats AdamW::update(const std::vector<ParamInfo>& layout, Tensor& parameters,
                                 const Tensor& gradients, const TrainConfig& train, double lr,
                                 double gradient_scale) {
    OptimizerStepStats stats;
    const auto n = static_cast<std::size_t>(gradients.numel());
    stats.grad_norm = std::sqrt(backend_->sum_squares(gradients.f32(), n)) * gradient_scale;
    if (train.grad_clip > 0 && stats.grad_norm > train.grad_clip) {
        stats.clip_scale = train.grad_clip / (stats.grad_norm + 1e-6);
    }
    ++step_;
    for (const auto& info : layout) {
        const float decay = info.is_matrix ? static_cast<float>(train.weight_decay) : 0.0f;
        backend_->adamw_update(parameters.f32() + info.offset, gradients.f32() + info.offset,
                               m_.f32() + info.offset, v_.f32() + info.offset, info.numel,
                               static_cast<float>(lr), static_cast<float>(train.beta1),
                               static_cast<float>(train.beta2), static_cast<float>(train.eps),
                               decay, static_cast<float>(stats.clip_scale * gradient_scale), step_);
    }
    return stats;
}

}  // namespace upcycle
