#pragma once
// What a trial needs before it trains, made the same way by the local workers (runner/executor)
// and by `upcycle run-trial` on a cluster node, which has no database: the run config, the
// training options (its folder, the checkpoint it starts from — its parent's, or one made by
// surgery —, its budget milestones), the state it starts from; whether a checkpoint already in
// its folder may be resumed; and the adoption of a pretrain.from parent checkpoint.
#include <filesystem>
#include <optional>
#include <string>

#include "core/backend.h"
#include "core/sweep/sweep.h"
#include "core/train.h"
#include "core/train_log.h"

namespace upcycle {

// A budget in seconds leaves train.steps at 0 in the plan; the run stops on its milestones.
inline constexpr int64_t kUnboundedSteps = int64_t{1} << 40;

// The finished parent of a continuation, as its trial needs it.
struct TrialParent {
    PlannedTrial planned;
    std::filesystem::path checkpoint;  // its final checkpoint
    double flops = 0;                  // its training FLOPs: the sunk cost
    double seconds = 0;                // its training wall seconds (seconds budgets are % of it)
};

struct TrialSetup {
    RunConfig run;
    TrainOptions options;  // out_dir, init_from, milestones, seconds_origin (stop flag unset)
    TrainingState origin;  // the state the trial starts from: its own compute counts from here
    double sunk_flops =
        0;  // the parent's FLOPs (for showing the budget spent); 0 for a pretraining
};

// parent: required for a continuation, ignored for a pretraining. A continuation's starting
// checkpoint is made by surgery into dir once (init.safetensors) when its method needs one.
TrialSetup prepare_trial(const PlannedTrial& planned, const std::optional<TrialParent>& parent,
                         const std::filesystem::path& dir, Backend& backend);

// "upcycle-0123abcd step 120/400 | loss 2.1234 | budget 30% | 12.3k tok/s | eta 1m 2s": the
// budget spent so far as % of the sunk cost when the trial has milestones.
std::string step_line(const std::string& label, const StepRecord& r, const TrialSetup& setup);

// A checkpoint in setup.options.out_dir and what its log.jsonl holds up to it. `missing` says
// what the log lacks ("" when it covers the checkpoint: every logged step and every budget
// evaluation the checkpoint has passed); a checkpoint whose log does not cover it cannot be
// trusted for what it would skip.
struct ResumableCheckpoint {
    std::filesystem::path checkpoint, log;
    TrainingState at;
    TrainLogContents contents;
    std::string missing;
};
// nullopt when the folder holds no checkpoint.
std::optional<ResumableCheckpoint> find_resumable_checkpoint(const TrialSetup& setup);

// A parent given by pretrain.from is not trained: the planned file (checked against its content
// hash) is copied to the trial's checkpoint and evaluated on the sweep's validation data (the
// continuations' 0 % point); its declared sunk FLOPs are the trial's FLOPs. Returns the summary
// to record (final_eval set, state the checkpoint's).
TrainSummary adopt_parent_checkpoint(const ParentCheckpoint& from, const RunConfig& run,
                                     const std::filesystem::path& dir, Backend& backend);

}  // namespace upcycle
