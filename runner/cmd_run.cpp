// upcycle run SWEEP.yaml [--set key=value ...] [--db results/upcycle.db] [--workers N]
//                        [--device cpu] [--retry-failed] [--executor local|slurm]
//                        [--partition P] [--gpus-per-trial G] [--ranks-per-trial N] [--time T]
//                        [--max-parallel K] [--sbatch-arg OPTION ...]
#include <atomic>
#include <csignal>

#include <fmt/format.h>

#include "core/errors.h"
#include "runner/commands.h"
#include "runner/executor.h"
#include "runner/slurm_executor.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

std::atomic<bool> g_stop_run{false};
extern "C" void request_run_stop(int) { g_stop_run.store(true); }

// The options only a SLURM submission reads, with whether each was given.
struct SlurmOnlyOptions {
    std::vector<std::pair<std::string, CLI::Option*>> given;
};

int run_run(const ExecutorOptions& args, const SlurmOnlyOptions& slurm_only) {
    ExecutorOptions options = args;
    if (options.runs_dir.empty()) options.runs_dir = options.db.parent_path() / "runs";
    if (options.executor != "local" && options.executor != "slurm") {
        throw UserError("", "--executor",
                        "expected local (worker processes on this machine) or slurm (job arrays "
                        "on a SLURM cluster), got '" +
                            options.executor + "'");
    }
    if (options.executor == "local") {
        for (const auto& [name, option] : slurm_only.given) {
            if (option->count() > 0) {
                throw UserError("", name, "a SLURM option: add --executor slurm");
            }
        }
    }
    if (options.executor == "slurm") {
        const auto summary = submit_sweep(options);
        fmt::print("sweep {}: {} trials | {} done | {} failed | {} pending | {} held by SLURM\n",
                   summary.sweep, summary.trials, summary.done, summary.failed, summary.pending,
                   summary.running);
        if (summary.failed > 0) {
            fmt::print(stderr,
                       "{} trial(s) failed: `upcycle status {}` shows why; "
                       "--retry-failed submits them again\n",
                       summary.failed, summary.sweep);
            return 1;
        }
        return 0;
    }
    std::signal(SIGINT, request_run_stop);
    std::signal(SIGTERM, request_run_stop);
    const auto summary = run_sweep(options, g_stop_run);
    fmt::print("sweep {}: {} trials | {} done | {} failed | {} pending | {} running\n",
               summary.sweep, summary.trials, summary.done, summary.failed, summary.pending,
               summary.running);
    if (summary.interrupted) {
        fmt::print(stderr, "interrupted: run the same command again to resume\n");
        return 130;
    }
    if (summary.failed > 0) {
        fmt::print(stderr,
                   "{} trial(s) failed: `upcycle status {}` shows why; "
                   "--retry-failed runs them again\n",
                   summary.failed, summary.sweep);
        return 1;
    }
    return 0;
}

}  // namespace

Command add_run_command(CLI::App& app) {
    auto args = std::make_shared<ExecutorOptions>();
    args->db = kDefaultDatabasePath;
    auto* sub =
        app.add_subcommand("run", "Run a sweep: plan, skip what is done, resume what was cut off");
    sub->add_option("sweep", args->sweep_file, "sweep (YAML)")
        ->required()
        ->check(CLI::ExistingFile);
    sub->add_option("--set", args->overrides, "override a sweep key: key.path=value (repeatable)");
    sub->add_option("--db", args->db, "results database (default results/upcycle.db)");
    sub->add_option("--runs", args->runs_dir,
                    "checkpoint directory (default: runs/ beside the database)");
    sub->add_option("--workers", args->workers, "worker processes")->check(CLI::PositiveNumber);
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_option("--stale-after", args->stale_after_seconds,
                    "seconds without a heartbeat after which a running trial is taken over");
    sub->add_option("--heartbeat", args->heartbeat_seconds, "seconds between heartbeats");
    sub->add_flag("--retry-failed", args->retry_failed, "run the sweep's failed trials again");
    sub->add_option("--executor", args->executor,
                    "local: worker processes here (default) | slurm: job arrays on a SLURM "
                    "cluster, results gathered by `upcycle collect`");
    sub->add_option("--ranks-per-trial", args->ranks_per_trial,
                    "processes that train one trial together (local: under mpirun; slurm: "
                    "tasks launched by srun)");
    auto slurm_only = std::make_shared<SlurmOnlyOptions>();
    auto slurm_option = [&](const std::string& name, CLI::Option* option) {
        slurm_only->given.emplace_back(name, option);
    };
    slurm_option("--partition", sub->add_option("--partition", args->slurm.partition,
                                                "slurm: the partition to submit to"));
    slurm_option("--gpus-per-trial",
                 sub->add_option("--gpus-per-trial", args->slurm.gpus_per_trial,
                                 "slurm: GPUs of one trial (with --device cuda)"));
    slurm_option("--time", sub->add_option("--time", args->slurm.time,
                                           "slurm: time limit of one trial (e.g. 2:00:00); a "
                                           "trial cut by it resumes when submitted again"));
    slurm_option("--max-parallel",
                 sub->add_option("--max-parallel", args->slurm.max_parallel,
                                 "slurm: array tasks of one submission running at once (%K)"));
    slurm_option("--sbatch-arg",
                 sub->add_option("--sbatch-arg", args->slurm.sbatch_args,
                                 "slurm: another sbatch option, e.g. --sbatch-arg=--account=A "
                                 "(repeatable)"));
    return [args, slurm_only] { return run_run(*args, *slurm_only); };
}

}  // namespace upcycle::cli
