// upcycle plot SWEEP [--db results/upcycle.db] [--out results/plots/SWEEP] [--metric val_loss]:
// PNG and SVG figures of a sweep drawn with gnuplot; the data files and .gp scripts stay
// beside them to edit and re-run (runner/report/plot.h).
#include <memory>
#include <string>

#include <fmt/format.h>

#include "runner/commands.h"
#include "runner/report/plot.h"
#include "runner/store/store.h"

namespace upcycle::cli {

namespace {

constexpr const char* kDefaultPlotRoot = "results/plots";

struct PlotArgs {
    std::string sweep;
    std::string db = kDefaultDatabasePath;
    std::string out;  // default: results/plots/SWEEP
    std::string metric = "val_loss";
};

int run_plot(const PlotArgs& args) {
    const Store store(args.db, Store::Mode::ReadOnly);
    PlotOptions options;
    options.out_dir = args.out.empty() ? std::filesystem::path(kDefaultPlotRoot) / args.sweep
                                       : std::filesystem::path(args.out);
    options.metric = args.metric;
    const PlotOutput output = make_plots(store, args.sweep, options);
    for (const auto& figure : output.figures) fmt::print("wrote {}\n", figure.string());
    for (const auto& note : output.notes) fmt::print("note: {}\n", note);
    if (!output.sources.empty()) {
        fmt::print("data and gnuplot scripts are in {} (edit, then `gnuplot NAME.gp` there)\n",
                   options.out_dir.string());
    }
    return 0;
}

}  // namespace

Command add_plot_command(CLI::App& app) {
    auto args = std::make_shared<PlotArgs>();
    auto* sub = app.add_subcommand(
        "plot",
        "Draw a sweep's figures with gnuplot: method comparison, differences to dense "
        "continuation, gain against sunk cost, training curves, expert load (PNG and SVG, "
        "with their data and scripts)");
    sub->add_option("sweep", args->sweep, "the sweep's name (as in `upcycle status`)")->required();
    sub->add_option("--db", args->db, "results database")->capture_default_str();
    sub->add_option("--out", args->out, "output directory (default: results/plots/SWEEP)");
    sub->add_option("--metric", args->metric, "metric of the comparison figure")
        ->capture_default_str();
    return [args] { return run_plot(*args); };
}

}  // namespace upcycle::cli
