// upcycle run SWEEP.yaml [--set key=value ...] [--db results/upcycle.db] [--workers N]
//                        [--device cpu] [--retry-failed]
#include <atomic>
#include <csignal>

#include <fmt/format.h>

#include "runner/commands.h"
#include "runner/executor.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

std::atomic<bool> g_stop_run{false};
extern "C" void request_run_stop(int) { g_stop_run.store(true); }

int run_run(const ExecutorOptions& args) {
    ExecutorOptions options = args;
    if (options.runs_dir.empty()) options.runs_dir = options.db.parent_path() / "runs";
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
        fmt::print(stderr, "{} trial(s) failed: `upcycle status {}` shows why; "
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
    auto* sub = app.add_subcommand("run", "Run a sweep: plan, skip what is done, resume what was cut off");
    sub->add_option("sweep", args->sweep_file, "sweep (YAML)")->required()->check(CLI::ExistingFile);
    sub->add_option("--set", args->overrides, "override a sweep key: key.path=value (repeatable)");
    sub->add_option("--db", args->db, "results database (default results/upcycle.db)");
    sub->add_option("--runs", args->runs_dir, "checkpoint directory (default: runs/ beside the database)");
    sub->add_option("--workers", args->workers, "worker processes")->check(CLI::PositiveNumber);
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_option("--stale-after", args->stale_after_seconds,
                    "seconds without a heartbeat after which a running trial is taken over");
    sub->add_option("--heartbeat", args->heartbeat_seconds, "seconds between heartbeats");
    sub->add_flag("--retry-failed", args->retry_failed, "run the sweep's failed trials again");
    return [args] { return run_run(*args); };
}

}  // namespace upcycle::cli
