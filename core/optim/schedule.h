#pragma once
// Learning-rate schedules. `step` is the optimizer step being taken, starting at 1, and it
// keeps counting across a continuation (the paper restores the dense run's step counter).
//   constant: lr after a linear warmup
//   rsqrt:    linear warmup to lr, then lr · sqrt(warmup / step)  (the paper's inverse
//             square root; horizon-free). With warmup 0 it decays from step 1.
//   cosine:   linear warmup, then cosine from lr down to lr·min_lr_ratio at train.steps
//             (depends on the horizon).
#include <cstdint>

#include "core/config.h"

namespace upcycle {

double learning_rate(const TrainConfig& train, int64_t step);

// Whether the schedule depends on the total number of steps (then a continuation with a
// different budget is a different trial).
bool schedule_depends_on_horizon(Schedule schedule);

}  // namespace upcycle
