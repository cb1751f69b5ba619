#pragma once
// Figures of one sweep (`upcycle plot`), drawn by gnuplot (Debian package gnuplot-nox): for
// each figure a data file (.dat) and a gnuplot script (.gp) are written into the output
// directory and kept, so that a researcher can edit them and run `gnuplot NAME.gp` there
// again; each script writes NAME.png (pngcairo) and NAME.svg.
//
//   comparison       the metric against extra compute as % of the sunk cost: one line per
//                    report row (runner/report/report.h), the mean over seeds with ± std bars
//                    where two or more seeds were evaluated, and the pretrained checkpoint's
//                    value as a dashed horizontal reference. When scratch (starting far
//                    above) squeezes the other rows into under 2/3 of the y-range, a second
//                    panel zooms in on them, scratch clipped there.
//   differences      each continuation row's paired difference to dense continuation of its
//                    pretraining (ReportCell::vs_dense) against extra compute: the mean, 95%
//                    interval bars where two or more seeds pair up, the zero line labelled as
//                    dense continuation; one line per row (a sweep that grids the pretraining
//                    gives one per sunk cost), rows nudged apart on x so their bars do not
//                    hide each other; the same zoom panel as the comparison.
//   sunk_cost        the gain against sunk cost, when the sweep has two or more pretrainings
//                    (Report::sunk_costs): Δ vs dense continuation against the pretraining's
//                    training tokens (its steps when tokens are not recorded), log scale; a
//                    panel per continuation other than dense and scratch (scratch reuses no
//                    sunk cost), one line per extra budget, 95% interval bars, the zero line.
//   training_curves  train_loss (lines) and val_loss (points) against cumulative training
//                    FLOPs, every trial of the sweep; a continuation that reuses the dense
//                    checkpoint starts at its parent's FLOPs (scratch starts at 0). Each
//                    trial's train_loss is drawn smoothed (ema_smoothed below, the .dat's
//                    fifth column) over its logged values drawn faint in the same hue. A
//                    lower panel zooms in on the continuations.
//   expert_load_*    one figure per MoE trial: per MoE layer a panel of the fraction of routed
//                    tokens each expert received, stacked, over training steps.
//
// A figure without data (no evaluations yet, no difference to dense, one sunk cost, no MoE
// trial) is skipped with a note.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "runner/store/store.h"

namespace upcycle {

struct PlotOptions {
    std::filesystem::path out_dir;    // created when missing
    std::string metric = "val_loss";  // of the comparison figure
    std::string gnuplot = "gnuplot";  // a program name looked up on PATH, or a path
};

struct PlotOutput {
    std::vector<std::filesystem::path> figures;  // the PNG and SVG files written
    std::vector<std::filesystem::path> sources;  // the .gp scripts and .dat files kept
    std::vector<std::string> notes;              // figures skipped, and why
};

// The smoothing of a training curve: an exponential moving average over the logged points,
// bias-corrected so that it starts at the first value rather than at 0 (as Adam's moments):
//   m_0 = 0,  m_k = (1 − α)·m_{k−1} + α·x_k,  smoothed_k = m_k / (1 − (1 − α)^k),
// with α = 1 − exp(−1/τ) and a time constant of τ = max(1, 5% of the trial's logged points)
// points. A non-finite value is passed through as NaN and leaves the average as it was.
inline constexpr double kEmaTimeConstantFraction = 0.05;
double ema_alpha(std::size_t points);
std::vector<double> ema_smoothed(const std::vector<double>& values);

// The gnuplot executable: `program` itself when it holds a '/', else the first match on
// PATH; nullopt when there is none.
std::optional<std::filesystem::path> find_gnuplot(const std::string& program);

// An unknown sweep is a UserError naming the database and its sweeps; no gnuplot is a
// UserError saying to install gnuplot-nox. gnuplot failing on a script is a runtime_error
// with its output (a bug in the script written here).
PlotOutput make_plots(const Store& store, const std::string& sweep, const PlotOptions& options);

}  // namespace upcycle
