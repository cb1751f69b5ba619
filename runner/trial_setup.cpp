#include "runner/trial_setup.h"

#include <set>

#include <fmt/format.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/sha256.h"
#include "core/surgery/continuation.h"
#include "core/task/task.h"
#include "core/train_policy.h"
#include "runner/format.h"

namespace upcycle {

namespace {

// The checkpoint a continuation starts from: the parent's own for dense continuation, else made
// once by surgery into the trial's directory (atomically, so a kill leaves none).
std::filesystem::path initial_checkpoint(const PlannedTrial& planned,
                                         const std::filesystem::path& parent_ckpt,
                                         const std::filesystem::path& dir, Backend& backend) {
    if (!makes_new_checkpoint(planned.method)) return parent_ckpt;
    const auto init = dir / "init.safetensors";
    if (std::filesystem::exists(init)) return init;
    const Checkpoint made = make_continuation(planned.method, continuation_options(planned),
                                              read_checkpoint(parent_ckpt), backend);
    write_checkpoint(init, made, backend);
    return init;
}

}  // namespace

TrialSetup prepare_trial(const PlannedTrial& planned, const std::optional<TrialParent>& parent,
                         const std::filesystem::path& dir, Backend& backend) {
    TrialSetup setup;
    setup.run = trial_run_config(planned);
    setup.options.out_dir = dir;
    std::filesystem::create_directories(dir);
    if (planned.method == Method::Pretrain) return setup;

    UPCYCLE_ASSERT(parent.has_value(), "a continuation is prepared with its parent");
    setup.sunk_flops = parent->flops;
    setup.options.init_from = initial_checkpoint(planned, parent->checkpoint, dir, backend);
    setup.origin = read_training_state(setup.options.init_from);
    setup.options.milestones = trial_milestones(planned, parent->planned, parent->seconds);
    if (planned.budget_unit == BudgetUnit::Seconds) {
        setup.run.train.steps = kUnboundedSteps;
        setup.options.stop_at_last_milestone = true;
    }
    setup.options.seconds_origin = setup.origin.seconds;
    return setup;
}

std::string step_line(const std::string& label, const StepRecord& r, const TrialSetup& setup) {
    const TrainingState& origin = setup.origin;
    const bool bounded = r.total_steps < kUnboundedSteps;
    const double seconds_per_step =
        r.step > origin.step
            ? (r.seconds - origin.seconds) / static_cast<double>(r.step - origin.step)
            : 0;
    const double remaining = static_cast<double>(r.total_steps - r.step) * seconds_per_step;
    const bool has_budget = !setup.options.milestones.empty() && setup.sunk_flops > 0;
    const std::string budget =
        has_budget
            ? fmt::format(" | budget {:.0f}%", 100.0 * (r.flops - origin.flops) / setup.sunk_flops)
            : "";
    return fmt::format("{} step {}/{} | loss {:.4f}{} | {} tok/s{}", label, r.step,
                       bounded ? std::to_string(r.total_steps) : std::string("?"), r.loss, budget,
                       cli::format_count(r.tokens_per_second),
                       bounded ? " | eta " + cli::format_duration(remaining) : "");
}

std::optional<ResumableCheckpoint> find_resumable_checkpoint(const TrialSetup& setup) {
    const auto ckpt = checkpoint_path(setup.options.out_dir);
    if (!std::filesystem::exists(ckpt)) return std::nullopt;
    ResumableCheckpoint found;
    found.checkpoint = ckpt;
    found.at = read_training_state(ckpt);
    found.log = log_path(setup.options.out_dir);
    found.contents = read_train_log(found.log, found.at.step);

    if (!std::filesystem::exists(found.log)) found.missing = "is missing";
    std::set<int64_t> logged;
    for (const auto& r : found.contents.steps) logged.insert(r.step);
    for (int64_t s = setup.origin.step + 1; s <= found.at.step && found.missing.empty(); ++s) {
        if (logs_step(setup.run.train, s) && !logged.count(s)) {
            found.missing = fmt::format("lacks the record of step {}", s);
        }
    }
    std::set<double> evaluated;
    for (const auto& e : found.contents.evals)
        evaluated.insert(e.milestones.begin(), e.milestones.end());
    for (const Milestone& m : setup.options.milestones) {
        if (found.missing.empty() && milestone_reached(m, found.at, setup.options.seconds_origin) &&
            !evaluated.count(m.percent)) {
            found.missing = fmt::format("lacks the evaluation at budget {:g}%", m.percent);
        }
    }
    return found;
}

TrainSummary adopt_parent_checkpoint(const ParentCheckpoint& from, const RunConfig& run,
                                     const std::filesystem::path& dir, Backend& backend) {
    if (!std::filesystem::is_regular_file(from.path)) {
        throw UserError(from.path, "pretrain.from", "the sweep's parent checkpoint is gone");
    }
    const std::string sha256 = sha256_file(from.path);
    if (sha256 != from.sha256) {
        throw UserError(from.path, "pretrain.from",
                        fmt::format("changed since the sweep was planned (sha256 {}, planned "
                                    "{}): its continuations would not continue the planned "
                                    "parent; run the sweep again to plan them from this file",
                                    sha256.substr(0, 12), from.sha256.substr(0, 12)));
    }
    std::filesystem::create_directories(dir);
    const Checkpoint ckpt = read_checkpoint(from.path);
    backend.set_precision(run.train.precision);
    const auto task = make_training_task(backend, run, run.name);
    load_into(ckpt, task->model(), nullptr);
    TrainSummary summary;
    summary.final_eval = task->evaluate(EvalScope::Full);
    summary.state = ckpt.state;
    summary.steps = ckpt.state.step;
    summary.completed = true;
    // a copy: the continuations must not see later edits of the user's file
    const auto target = checkpoint_path(dir);
    const auto partial = dir / ".adopting.safetensors";
    std::filesystem::copy_file(from.path, partial,
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::rename(partial, target);
    summary.checkpoint = target;
    return summary;
}

}  // namespace upcycle
