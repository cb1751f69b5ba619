// upcycle results SWEEP [--db results/upcycle.db] [--format table|csv|json|markdown]
// [--metric val_loss|val_accuracy]: the paper's comparison of the continuation methods at each
// budget, mean ± std over seeds and the difference to dense continuation
// (runner/report/report.h).
#include <memory>
#include <string>

#include <fmt/format.h>

#include "core/errors.h"
#include "runner/collect.h"
#include "runner/commands.h"
#include "runner/report/report.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

struct ResultsArgs {
    std::string sweep;
    std::string db = kDefaultDatabasePath;
    std::string format = "table";
    std::string metric = "val_loss";
};

int run_results(const ResultsArgs& args) {
    if (args.format != "table" && args.format != "csv" && args.format != "json" &&
        args.format != "markdown") {
        throw UserError("", "--format",
                        "expected table, csv, json or markdown, got '" + args.format + "'");
    }
    collect_if_cluster_jobs(args.db, args.sweep);
    const Store store(args.db, Store::Mode::ReadOnly);
    const Report report = build_report(store, args.sweep, args.metric);
    if (args.format == "csv")
        fmt::print("{}", report_csv(report));
    else if (args.format == "json")
        fmt::print("{}", report_json(report));
    else if (args.format == "markdown")
        fmt::print("{}", report_markdown(report));
    else
        fmt::print("{}", report_table(report));
    return 0;
}

}  // namespace

Command add_results_command(CLI::App& app) {
    auto args = std::make_shared<ResultsArgs>();
    auto* sub = app.add_subcommand(
        "results",
        "Compare the continuation methods of a sweep at each budget (mean ± std over "
        "seeds, difference to dense continuation)");
    sub->add_option("sweep", args->sweep, "the sweep's name (as in `upcycle status`)")->required();
    sub->add_option("--db", args->db, "results database")->capture_default_str();
    sub->add_option("--format", args->format, "table | csv | json | markdown")
        ->capture_default_str();
    sub->add_option("--metric", args->metric, "val_loss | val_accuracy")->capture_default_str();
    return [args] { return run_results(*args); };
}

}  // namespace upcycle::cli
