#include "core/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace upcycle {

AdamW::AdamW(Backend& backend, std::size_t num_parameters)
    : AdamW(backend, num_parameters, ParameterRange{0, num_parameters}) {}

AdamW::AdamW(Backend& backend, std::size_t num_parameters, ParameterRange shard)
    : backend_(&backend),
      num_parameters_(num_parameters),
      shard_(shard),
      m_(Tensor::zeros(backend, {static_cast<int64_t>(shard.size())})),
      v_(Tensor::zeros(backend, {static_cast<int64_t>(shard.size())})) {
    UPCYCLE_ASSERT(shard.begin <= shard.end, "a parameter shard ends before it begins");
}

void AdamW::reset() {
    m_.set_zero();
    v_.set_zero();
    step_ = 0;
}

OptimizerStepStats AdamW::update(const std::vector<ParamInfo>& layout, Tensor& parameters,
                                 const Tensor& gradients, const TrainConfig& train, double lr,
                                 double gradient_scale) {
    UPCYCLE_ASSERT(holds_all(), "AdamW::update needs the moments of every parameter");
    const auto n = static_cast<std::size_t>(gradients.numel());
    const double grad_norm = std::sqrt(backend_->sum_squares(gradients.f32(), n)) * gradient_scale;
    return update_shard(layout, parameters, gradients.f32(), train, lr, gradient_scale, grad_norm);
}

OptimizerStepStats AdamW::update_shard(const std::vector<ParamInfo>& layout, Tensor& parameters,
                                       const float* shard_gradients, const TrainConfig& train,
                                       double lr, double gradient_scale, double grad_norm) {
    OptimizerStepStats stats;
    stats.grad_norm = grad_norm;
    if (train.grad_clip > 0 && stats.grad_norm > train.grad_clip) {
        stats.clip_scale = train.grad_clip / (stats.grad_norm + 1e-6);
    }
    ++step_;
    // each parameter's part of the shard: [lo, hi) of the buffer, at lo - shard.begin in the
    // shard's gradients and moments
    for (const auto& info : layout) {
        const std::size_t lo = std::max(info.offset, shard_.begin);
        const std::size_t hi = std::min(info.offset + info.numel, shard_.end);
        if (lo >= hi) continue;
        const std::size_t at = lo - shard_.begin;
        const float decay = info.is_matrix ? static_cast<float>(train.weight_decay) : 0.0f;
        backend_->adamw_update(parameters.f32() + lo, shard_gradients + at, m_.f32() + at,
                               v_.f32() + at, hi - lo, static_cast<float>(lr),
                               static_cast<float>(train.beta1), static_cast<float>(train.beta2),
                               static_cast<float>(train.eps), decay,
                               static_cast<float>(stats.clip_scale * gradient_scale), step_);
    }
    return stats;
}

}  // namespace upcycle
