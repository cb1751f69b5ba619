#pragma once
// log.jsonl, the run's own record beside its checkpoint: one JSON object per line, a "train"
// record at every logged step and an "eval" record at every evaluation, so a run can be read
// without the results database.
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "core/train.h"

namespace upcycle {

// The log train() keeps in out_dir.
std::filesystem::path log_path(const std::filesystem::path& out_dir);

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
    // metrics. Flushed at once: evaluations are rare, and what a reader of a live run wants.
    void write_eval(const EvalRecord& record);

private:
    explicit TrainLog(const std::filesystem::path& path);  // appends
    std::ofstream out_;
};

}  // namespace upcycle
