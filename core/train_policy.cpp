#include "core/train_policy.h"

namespace upcycle {

TrainPolicy::TrainPolicy(const RunConfig& config, const TrainOptions& options,
                         const TrainingState& start)
    : steps_(config.train.steps),
      eval_every_(config.eval.every),
      checkpoint_every_(config.checkpoint.every),
      checkpoint_every_seconds_(config.checkpoint.every_seconds),
      milestones_(options.milestones),
      seconds_origin_(options.seconds_origin),
      stop_at_last_milestone_(options.stop_at_last_milestone),
      last_checkpoint_(Clock::now()) {
    while (next_milestone_ < milestones_.size() &&
           milestone_reached(milestones_[next_milestone_], start, seconds_origin_)) {
        ++next_milestone_;
    }
}

bool milestone_reached(const Milestone& m, const TrainingState& state, double seconds_origin) {
    return (m.step >= 0 && state.step >= m.step) ||
           (m.seconds >= 0 && state.seconds - seconds_origin >= m.seconds);
}

bool TrainPolicy::all_milestones_done() const {
    return stop_at_last_milestone_ && !milestones_.empty() && next_milestone_ == milestones_.size();
}

bool TrainPolicy::wants_step(const TrainingState& state) const {
    return state.step < steps_ && !all_milestones_done();
}

StepPlan TrainPolicy::after_step(const TrainingState& state) {
    StepPlan plan;
    while (next_milestone_ < milestones_.size() &&
           milestone_reached(milestones_[next_milestone_], state, seconds_origin_)) {
        plan.milestones.push_back(milestones_[next_milestone_++]);
    }
    plan.last = state.step == steps_ || all_milestones_done();
    if (!plan.milestones.empty() || plan.last) {
        plan.eval = EvalScope::Full;  // budget milestones and the end also measure the test split
    } else if (eval_every_ > 0 && state.step % eval_every_ == 0) {
        plan.eval = EvalScope::Validation;
    }
    return plan;
}

bool TrainPolicy::checkpoint_due(const TrainingState& state, const StepPlan& plan) const {
    const double since_checkpoint =
        std::chrono::duration<double>(Clock::now() - last_checkpoint_).count();
    return plan.last || !plan.milestones.empty() ||
           (checkpoint_every_ > 0 && state.step % checkpoint_every_ == 0) ||
           (checkpoint_every_seconds_ > 0 && since_checkpoint >= checkpoint_every_seconds_);
}

}  // namespace upcycle
