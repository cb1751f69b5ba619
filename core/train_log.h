#pragma once
// log.jsonl, the run's own record beside its checkpoint: one JSON object per line, a "train"
// record at every logged step and an "eval" record at every evaluation (with the budget
// milestones it stands for), so a run can be read without the results database, and a
// results database that lost a trial's rows can take them back from it.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/train.h"

namespace upcycle {

// Whether train() logs this step: every train.log_every steps, and the last.
bool logs_step(const TrainConfig& train, int64_t step);

// The log train() keeps in out_dir.
std::filesystem::path log_path(const std::filesystem::path& out_dir);

// An "eval" record read back: the evaluation and the budget percents of its milestones.
struct LoggedEval {
    EvalRecord record;
    std::vector<double> milestones;
};

// What a log holds up to a step, in order (a non-finite number, written null, reads NaN).
struct TrainLogContents {
    std::vector<StepRecord> steps;  // total_steps and tokens_per_second are not logged: 0
    std::vector<LoggedEval> evals;
};

// Reads the records up to `up_to_step`; a line cut by a kill is skipped. A missing file reads
// empty. A line that parses but is not a record of ours is a UserError naming the file and line.
TrainLogContents read_train_log(const std::filesystem::path& path, int64_t up_to_step);

class TrainLog {
public:
    // A new log: an old one at path is emptied.
    static TrainLog start(const std::filesystem::path& path);
    // The log of a run resumed from its checkpoint at `step`: records past that step (written
    // after the checkpoint, or cut by a kill) are dropped, so the log matches an
    // uninterrupted run's.
    static TrainLog resume(const std::filesystem::path& path, int64_t step);

    // kind "train": step, loss, lr, grad_norm, tokens, flops, seconds, and with MoE layers
    // aux_loss and the routing statistics of each.
    void write_step(const StepRecord& record);
    // kind "eval": step, flops, seconds, val_loss, val_accuracy, val_tokens and the extra
    // metrics, and "milestones" (their budget percents) when it evaluates budget milestones.
    // Flushed at once: evaluations are rare, and what a reader of a live run wants.
    void write_eval(const EvalRecord& record, const std::vector<Milestone>& milestones = {});

    // Writes what is buffered to the file (before each checkpoint); UserError if it cannot.
    void flush();

private:
    explicit TrainLog(const std::filesystem::path& path);  // appends
    std::filesystem::path path_;
    std::ofstream out_;
};

}  // namespace upcycle
