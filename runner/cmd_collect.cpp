// upcycle collect [SWEEP] [--db results/upcycle.db] [--runs DIR]: records in the database what
// the trials' SLURM jobs left in their folders, and the state of the jobs still queued or
// running (runner/collect.h). `status` and `results` do the same first.
#include <fmt/format.h>

#include "runner/collect.h"
#include "runner/commands.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

struct CollectArgs {
    std::string sweep;
    std::filesystem::path db = kDefaultDatabasePath;
    std::filesystem::path runs_dir;
};

int run_collect(const CollectArgs& args) {
    Store store(args.db, Store::Mode::ReadWrite);
    const std::optional<std::string> sweep =
        args.sweep.empty() ? std::nullopt : std::optional<std::string>(args.sweep);
    const auto runs =
        args.runs_dir.empty()
            ? (args.db.has_parent_path() ? args.db.parent_path() : std::filesystem::path(".")) /
                  "runs"
            : args.runs_dir;
    const CollectSummary summary = collect_results(
        store, sweep, runs, [](const std::string& line) { fmt::print("{}\n", line); });
    for (const auto& [job, state] : summary.active) {
        fmt::print("slurm job {} ({}): {}{}{}\n", job.job_id, job.trial_hash.substr(0, 12),
                   state.state, state.reason.empty() ? "" : " (" + state.reason + ")",
                   state.node.empty() ? "" : " on " + state.node);
    }
    fmt::print(
        "collected: {} done | {} failed | {} ended without a result | {} queued or "
        "running\n",
        summary.done, summary.failed, summary.died, summary.held);
    return 0;
}

}  // namespace

Command add_collect_command(CLI::App& app) {
    auto args = std::make_shared<CollectArgs>();
    auto* sub = app.add_subcommand(
        "collect", "Record the results of trials run by SLURM jobs (result.json, log.jsonl)");
    sub->add_option("sweep", args->sweep, "only this sweep (by name)");
    sub->add_option("--db", args->db, "results database")->capture_default_str();
    sub->add_option("--runs", args->runs_dir,
                    "runs folder of trials never submitted (default: runs/ beside the database)");
    return [args] { return run_collect(*args); };
}

}  // namespace upcycle::cli
