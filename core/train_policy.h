#pragma once
// When a training run evaluates, checkpoints and ends: at budget milestones (one full
// evaluation and a checkpoint, however many are reached by the same step), every eval.every
// steps (the validation split), every checkpoint.every steps or checkpoint.every_seconds of
// wall time, and at the last step (full evaluation and checkpoint). The trainer asks; this
// only decides.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/task/task.h"
#include "core/train.h"

namespace upcycle {

// What to do after an optimizer step (the checkpoint is asked for separately, once the
// evaluation has run: its wall time counts towards checkpoint.every_seconds).
struct StepPlan {
    std::vector<Milestone> milestones;  // reached by this step, in order; one evaluation for all
    bool last = false;                  // the run completes with this step
    std::optional<EvalScope> eval;      // evaluate now, in this scope
};

// Whether a run at `state` has reached the milestone (its seconds count from seconds_origin).
bool milestone_reached(const Milestone& milestone, const TrainingState& state,
                       double seconds_origin);

class TrainPolicy {
public:
    // Milestones already behind `start` (a resumed or initial state) are not redone. The
    // checkpoint timer starts now.
    TrainPolicy(const RunConfig& config, const TrainOptions& options, const TrainingState& start);

    // Whether the run takes another step: steps remain and, where the last milestone ends
    // the run, milestones too.
    bool wants_step(const TrainingState& state) const;
    // After the step that brought the run to `state`; moves past the milestones it reached.
    StepPlan after_step(const TrainingState& state);
    // Whether to checkpoint now, at state.step with this step's plan.
    bool checkpoint_due(const TrainingState& state, const StepPlan& plan) const;
    // A checkpoint was written: restarts the checkpoint.every_seconds timer.
    void checkpointed() { last_checkpoint_ = Clock::now(); }

private:
    using Clock = std::chrono::steady_clock;
    bool all_milestones_done() const;

    int64_t steps_;
    int64_t eval_every_;
    int64_t checkpoint_every_;
    double checkpoint_every_seconds_;
    std::vector<Milestone> milestones_;
    double seconds_origin_;
    bool stop_at_last_milestone_;
    std::size_t next_milestone_ = 0;
    Clock::time_point last_checkpoint_;
};

}  // namespace upcycle
