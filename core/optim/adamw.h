#pragma once
// AdamW over a flat parameter buffer: decoupled weight decay on matrices only, global
// gradient-norm clipping folded into the update (no extra pass over the gradients).
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/model/gpt.h"
#include "core/tensor.h"

namespace upcycle {

struct OptimizerStepStats {
    double grad_norm = 0;  // global L2 norm of gradients · gradient_scale, before clipping
    double clip_scale = 1; // factor applied to the gradients (1: not clipped)
};

class AdamW {
public:
    AdamW(Backend& backend, std::size_t num_parameters);

    // First and second moments, same layout as the parameters.
    Tensor& exp_avg() { return m_; }
    Tensor& exp_avg_sq() { return v_; }
    // Number of updates taken so far; the next update is step() + 1.
    int64_t step() const { return step_; }
    void set_step(int64_t step) { step_ = step; }
    void reset();  // zero moments and step

    // One step on gradients · gradient_scale (1/micro-batches: the buffer holds the sum of
    // the micro-batches' mean gradients; the factor is folded into the update, no extra pass).
    OptimizerStepStats update(const std::vector<ParamInfo>& layout, Tensor& parameters,
                              const Tensor& gradients, const TrainConfig& train, double lr,
                              double gradient_scale = 1.0);

private:
    Backend* backend_;
    Tensor m_, v_;
    int64_t step_ = 0;
};

}  // namespace upcycle
