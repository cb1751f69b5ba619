#pragma once
// SLURM's command-line tools as the runner uses them: sbatch to submit, squeue (and sacct for
// what squeue has forgotten) for the states of submitted jobs. Only the submitting host runs
// them; the results database never leaves it.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace upcycle {

// The program's path on PATH, if it is there and executable.
std::optional<std::filesystem::path> find_on_path(const std::string& program);

// This program's own path, for what it starts again (a script on a cluster's nodes, which share
// the filesystem; the ranks of a trial under mpirun).
std::filesystem::path this_program();

struct CommandOutput {
    int exit_code = -1;  // -1: it did not run or was killed by a signal
    std::string output;  // stdout and stderr together
};
// Runs argv (argv[0] looked up on PATH) without a shell in between; waits for it.
CommandOutput run_command(const std::vector<std::string>& argv);

// sbatch on PATH; a UserError saying what to install or where to run when it is not.
std::filesystem::path require_sbatch();

// Submits with `sbatch --parsable ARGS…` and returns the job id; a refusal is a UserError
// quoting sbatch.
std::string sbatch_submit(const std::vector<std::string>& args);

struct SlurmJobState {
    std::string state;   // PENDING, RUNNING, COMPLETED, TIMEOUT, CANCELLED, NODE_FAIL, …
    std::string reason;  // SLURM's reason or exit code, "" when it gives none
    std::string node;    // where it runs or ran, "" when not yet placed
};

struct SlurmJobStates {
    bool squeue_found = false;  // false: no state can be known here (not on a SLURM host)
    // array tasks by "ARRAYJOB_TASK" (and plain jobs by id) that squeue or sacct knows
    std::map<std::string, SlurmJobState> jobs;
    std::vector<std::string> notes;  // why a source said nothing (e.g. accounting disabled)
};
// The states of these jobs (job ids as sbatch and the array index make them): squeue first
// (every array task on a line of its own, ended ones while SLURM still keeps them), then sacct
// for the ones squeue no longer knows, when accounting is there.
SlurmJobStates query_slurm_jobs(const std::vector<std::string>& job_ids);

// Whether SLURM may still run (or is running) a job in this state; unknown states count as
// active, so a trial is never given up on a state this code does not know.
bool slurm_state_is_active(const std::string& state);

}  // namespace upcycle
