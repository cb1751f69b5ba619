#pragma once
// result.json: how a trial run by a cluster task ended, written last and atomically into the
// trial's folder (runs/HASH/result.json), so `upcycle collect` on the submitting host either
// finds a whole result or none. With log.jsonl beside it, it holds every row a local worker
// would have recorded: status done with the state the trial started from and ended at, its
// final evaluation (a pretraining's), its checkpoint (file, bytes, SHA-256) and provenance; or
// status failed with the error.
#include <filesystem>
#include <optional>
#include <string>

#include "core/checkpoint.h"
#include "runner/trial_recorder.h"

namespace upcycle {

inline constexpr const char* kTrialResultFile = "result.json";

struct TrialResult {
    std::string hash;
    bool done = false;  // else failed
    std::string error;  // why it failed
    std::string host;   // where it ran
    TrainingState origin;
    FinishedTrial finished;  // when done; finished.checkpoint is absolute (the trial's folder)
};

std::filesystem::path trial_result_path(const std::filesystem::path& trial_dir);
void write_trial_result(const std::filesystem::path& trial_dir, const TrialResult& result);
// UserError naming the file and the key when it is malformed.
TrialResult read_trial_result(const std::filesystem::path& trial_dir);

}  // namespace upcycle
