#pragma once
// AdamW over a flat parameter buffer: decoupled weight decay on matrices only, global
// gradient-norm clipping folded into the update (no extra pass over the gradients).
//
// An AdamW may hold the moments of one shard of the buffer only (ZeRO-1: each rank of a
// data-parallel job keeps and updates its own shard, core/optim/data_parallel_adamw.h); the
// weight-decay rule stays per parameter, whichever shard an element falls in.
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/model/gpt.h"
#include "core/tensor.h"

namespace upcycle {

struct OptimizerStepStats {
    double grad_norm = 0;   // global L2 norm of gradients · gradient_scale, before clipping
    double clip_scale = 1;  // factor applied to the gradients (1: not clipped)
};

// Elements [begin, end) of the flat parameter buffer. A shard may reach past the buffer's end
// (the last rank's shard of a buffer padded to equal shards): elements there are no parameter
// and are never updated.
struct ParameterRange {
    std::size_t begin = 0;
    std::size_t end = 0;
    std::size_t size() const { return end - begin; }
};

class AdamW {
public:
    // The moments of every parameter.
    AdamW(Backend& backend, std::size_t num_parameters);
    // The moments of the parameters in `shard` only.
    AdamW(Backend& backend, std::size_t num_parameters, ParameterRange shard);

    // First and second moments of the shard's elements, [shard().size()].
    Tensor& exp_avg() { return m_; }
    Tensor& exp_avg_sq() { return v_; }
    const ParameterRange& shard() const { return shard_; }
    std::size_t num_parameters() const { return num_parameters_; }
    bool holds_all() const { return shard_.begin == 0 && shard_.end == num_parameters_; }
    // Number of updates taken so far; the next update is step() + 1.
    int64_t step() const { return step_; }
    void set_step(int64_t step) { step_ = step; }
    void reset();  // zero moments and step

    // One step on gradients · gradient_scale (1/micro-batches: the buffer holds the sum of
    // the micro-batches' mean gradients; the factor is folded into the update, no extra pass).
    // Holds the moments of every parameter.
    OptimizerStepStats update(const std::vector<ParamInfo>& layout, Tensor& parameters,
                              const Tensor& gradients, const TrainConfig& train, double lr,
                              double gradient_scale = 1.0);
    // The same step for the shard's parameters only: shard_gradients[shard().size()] are the
    // shard's gradients, grad_norm the norm of all the gradients · gradient_scale (which the
    // clip needs: a ZeRO-1 job reduces it over the ranks).
    OptimizerStepStats update_shard(const std::vector<ParamInfo>& layout, Tensor& parameters,
                                    const float* shard_gradients, const TrainConfig& train,
                                    double lr, double gradient_scale, double grad_norm);

private:
    Backend* backend_;
    std::size_t num_parameters_;
    ParameterRange shard_;
    Tensor m_, v_;
    int64_t step_ = 0;
};

}  // namespace upcycle
