#pragma once
// The sweep executor behind `upcycle run`: registers a sweep's planned trials in the store,
// then workers (processes) claim runnable trials one at a time and run them — a pretraining,
// or a continuation made from its parent's checkpoint by surgery and trained to its budget
// milestones — streaming metrics, evaluations, routing statistics and artifacts into the
// store. A killed worker's trial is taken over (stale heartbeat) and resumes from its latest
// checkpoint; a failing trial is recorded with its error and the others go on.
#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

namespace upcycle {

// What `run --executor slurm` asks of SLURM for each trial (runner/slurm_executor.h).
struct SlurmOptions {
    std::string partition;                 // "" : the cluster's default
    int gpus_per_trial = 0;                // GPUs of one trial (all its ranks together)
    std::string time;                      // time limit of a trial, SLURM's format; "" : default
    int max_parallel = 0;                  // array tasks of one submission at once (%K); 0: any
    std::vector<std::string> sbatch_args;  // more sbatch options, as #SBATCH lines
};

struct ExecutorOptions {
    std::filesystem::path sweep_file;
    std::vector<std::string> overrides;
    std::filesystem::path db;        // results/upcycle.db by default
    std::filesystem::path runs_dir;  // checkpoints: <db dir>/runs/<trial hash prefix>/
    int workers = 1;
    std::string device = "cpu";
    double stale_after_seconds =
        120;  // a running trial without a heartbeat for this long is taken over
    double heartbeat_seconds = 10;
    bool retry_failed = false;       // put the sweep's failed trials back to pending first
    std::string executor = "local";  // local: worker processes here; slurm: a SLURM cluster
    int ranks_per_trial = 1;         // processes that train one trial together
    SlurmOptions slurm;
};

struct ExecutorSummary {
    std::string sweep;
    int64_t trials = 0;
    int64_t done = 0, failed = 0, pending = 0, running = 0;
    bool interrupted = false;
};

ExecutorSummary run_sweep(const ExecutorOptions& options, const std::atomic<bool>& stop);

// The sweep planned and its trials added to the store (what is there already is kept), with
// the failed ones put back to pending under --retry-failed: the first step of every executor.
struct RegisteredSweep {
    std::string name;
    int64_t sweep_id = 0;
    int64_t trials = 0;
};
RegisteredSweep register_sweep(const ExecutorOptions& options);

// The sweep's trials counted by status.
ExecutorSummary summarize_sweep(const std::filesystem::path& db, const RegisteredSweep& sweep);

// The checkpoint directory of a trial.
std::filesystem::path trial_directory(const std::filesystem::path& runs_dir,
                                      const std::string& hash);

}  // namespace upcycle
