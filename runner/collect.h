#pragma once
// `upcycle collect`: brings what cluster tasks left in the trials' folders into the results
// database on this host (SQLite is never shared over a network filesystem). For each trial
// held by a SLURM job it asks SLURM where the job is; a finished task's result.json and the
// log.jsonl beside it become the same rows a local worker records (through TrialRecorder), by
// trial hash and idempotently; a job that ended without a result (a time limit, a node failure,
// out of memory, cancelled) fails its trial with SLURM's state and reason, and the next
// `upcycle run --executor slurm` submits it again, resuming from its checkpoint. Finished trial
// folders of trials the store does not have done (a deleted database) are taken in too.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runner/slurm_commands.h"
#include "runner/store/store.h"

namespace upcycle {

struct CollectSummary {
    int done = 0;    // results recorded done
    int failed = 0;  // results recorded failed (the trial's own error)
    int died = 0;    // jobs that ended without a result
    int held = 0;    // jobs still queued or running
    std::vector<std::pair<SlurmJobRecord, SlurmJobState>> active;  // those, with SLURM's state
};

// sweep_name: the trials of every sweep with this name, or all. runs_dir: where the folders of
// trials never submitted are looked for (the default beside the database). say: one line each
// for what changed.
CollectSummary collect_results(Store& store, const std::optional<std::string>& sweep_name,
                               const std::filesystem::path& runs_dir,
                               const std::function<void(const std::string&)>& say);

// For status and results: collects when the database holds open SLURM jobs of the sweep and
// this host may write it; otherwise nothing (a read-only database is only read).
void collect_if_cluster_jobs(const std::filesystem::path& db,
                             const std::optional<std::string>& sweep_name);

// Records a finished trial's result.json (and the log.jsonl beside it) in the store, as a
// local worker would have recorded them; returns whether the trial was done (else it is failed
// with the result's error). A UserError when the result is not this trial's or its checkpoint
// is not what it says.
bool record_trial_result(Store& store, const TrialRecord& trial, const std::filesystem::path& dir,
                         const std::function<void(const std::string&)>& say);

// The beginning of the error of a trial whose SLURM job ended without a result.
inline constexpr const char* kSlurmJobDied = "slurm job ";

}  // namespace upcycle
