#pragma once
// One trial trained by several ranks on this machine, for the local executor's
// --ranks-per-trial N: `mpirun -np N upcycle run-trial HASH --runs DIR`, the command a SLURM
// array task runs under srun, from the trial.json already written into the trial's folder.
// The ranks share this machine's cores with the other workers' ranks, so each gets a share of
// the OpenMP threads and none is bound to a core.
#include <filesystem>
#include <functional>
#include <string>

namespace upcycle {

struct LocalRanks {
    int ranks = 2;
    int threads_per_rank = 1;  // OMP_NUM_THREADS of each rank
    std::string device = "cpu";
};

// Runs the trial's ranks and waits for them. should_stop is asked a few times a second; once it
// says yes, the ranks are asked to checkpoint and stop (SIGTERM, as SLURM does). Returns
// mpirun's exit status (128 + the signal that ended it). A UserError when mpirun is not on PATH.
int run_trial_on_local_ranks(const std::string& hash, const std::filesystem::path& runs_dir,
                             const LocalRanks& ranks, const std::function<bool()>& should_stop);

}  // namespace upcycle
