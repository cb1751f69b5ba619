#pragma once
// The paper's comparison over one sweep of the results store (`upcycle results`), and the
// grouping of a sweep's trials into report rows that the plots share (runner/report/plot.h).
//
// Rows are methods — the dense pretraining ("pretrained (0%)", the checkpoint every
// continuation starts from), then dense, upcycle, scratch, warmstart — split by the config
// values that vary between the trials of one method (e.g. "upcycle experts=16"), and averaged
// over seeds (run.train.seed). Columns are the budgets: extra compute as % of the sunk cost
// (for scratch, which reuses none, its total compute). A cell is the mean ± sample std of the
// metric over the seeds evaluated there, and its difference to dense continuation at the same
// budget, paired by seed (the same seed continues the same dense parent on the same data
// order) with a 95% interval; an interval that contains zero is a tie (statistics.h).
//
// Under the table: the noise floor (the median seed-to-seed std of a cell), what the data
// show in words (each method against dense continuation, scratch against upcycle, with the
// extra compute at which one overtakes the other), and, when the sweep grids the pretraining
// (a sunk-cost axis such as pretrain.steps), Δ(upcycle − dense) for each sunk cost.
//
// Which values vary is found by comparing the canonical trial configs (core/sweep/sweep.h):
// every leaf path whose value differs between trials of one method is a candidate, except the
// seeds (run.train.seed, options.seed), the parent hash, the budget and the step count (both
// follow from the budget). A path whose value follows from paths already chosen is left out
// (run.model.moe.experts follows from options.experts), options come first, and a value that
// most variants share strictly more often than any other (the recipe a zip varies one key
// at a time from) is not spelled out. Keys that vary between the pretrainings (a grid over
// model.channels) split every row, the pretrained one included, and a continuation belongs
// with its parent's.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runner/report/statistics.h"
#include "runner/store/store.h"

namespace upcycle {

// How a trial reads in a report.
struct TrialLabel {
    Method method = Method::Pretrain;
    std::string base;     // the pretraining's varying keys ("model.channels=256"); "" if none
    std::string variant;  // the method's varying keys ("experts=16"); "" if none
    std::string label;    // the row label: "upcycle experts=16", "pretrained (0%)"
    std::string seed;     // run.train.seed as text ("" when the config has none)
    // Sorts rows: the base's then the variant's values, numbers by value.
    std::vector<nlohmann::json> base_key, variant_key;
};

// The x axis of a comparison: "extra training FLOPs" (or steps, seconds).
std::string unit_phrase(BudgetUnit unit);

// One label per trial, in the same order.
std::vector<TrialLabel> label_trials(const std::vector<TrialRecord>& trials);

// The report row label of the dense pretraining.
inline constexpr const char* kPretrainedLabel = "pretrained (0%)";

struct ReportCell {
    double budget_percent = 0;
    int planned = 0;  // trials of the row that evaluate at this budget (usually one per seed)
    int n = 0;        // evaluations recorded here
    int failed = 0;   // planned trials that failed without recording it
    std::optional<double> mean;  // over the n values; NaN when one of them is NaN
    std::optional<double> std;   // sample standard deviation, when n >= 2
    SeedValues values;           // the n values by seed
    // This row − the dense row of its base at this budget, paired by seed; n = 0 when there
    // is no dense reference (or no seed evaluated on both sides).
    PairedDifference vs_dense;
};

struct ReportRow {
    Method method = Method::Pretrain;  // Pretrain for the pretrained reference row
    std::string base, variant, label;
    std::vector<ReportCell> cells;     // ascending budget: planned or recorded ones only
    bool has_dense_reference = false;  // a dense row of the same base gives the deltas

    const ReportCell* cell(double budget_percent) const;  // nullptr when not in this row
    // "experts=16", the base first: what distinguishes the row within its method.
    std::string variant_text() const;
};

// The dense pretraining a group of rows continues from (one per base).
struct SunkCost {
    double flops = 0;   // training FLOPs of the pretraining, mean over its finished seeds
    double tokens = 0;  // training tokens, likewise
    int64_t steps = 0;  // its step count
    int finished = 0;   // pretraining trials done (0: not known yet)
};

// The seed-to-seed spread of the sweep's cells: what a difference must exceed to be a finding.
struct NoiseFloor {
    int cells = 0;  // cells with two or more seeds
    int max_seeds = 0;
    double median_std = 0, min_std = 0, max_std = 0;
};

// One method against another over the budgets both evaluated, paired by seed: the candidate
// minus the reference, and where the candidate overtakes it (statistics.h).
struct Comparison {
    std::string candidate, reference;  // row labels
    std::string base;                  // the pretraining both continue ("" when one)
    Method candidate_method = Method::Dense, reference_method = Method::Dense;
    std::vector<DifferencePoint> points;  // ascending budget; candidate − reference
    Crossover crossover;                  // oriented so that catching up means being better
    // Scratch against upcycle only: at equal total compute, counting the sunk cost that
    // upcycle reuses. Scratch at B + 100% (its total) − upcycle at +B% (100% sunk + B% extra);
    // each point's budget is upcycle's B.
    std::vector<DifferencePoint> equal_total_compute;
};

struct Report {
    std::string sweep, metric;
    std::string database;                        // the store's path, as given
    BudgetUnit budget_unit = BudgetUnit::Flops;  // of the continuations' budgets
    bool lower_is_better = true;
    std::vector<double> budgets;  // every column, ascending (0: the pretrained reference)
    std::vector<ReportRow> rows;  // pretrained, dense, upcycle, scratch, warmstart, others
    std::map<TrialStatus, int64_t> status_counts;  // trials of the sweep by status
    std::map<std::string, SunkCost> sunk_costs;    // by base; only bases with a pretraining
    std::optional<NoiseFloor> noise_floor;         // absent when no cell has two seeds
    // Each continuation against dense continuation of its base, and scratch against upcycle
    // (the paper's two crossovers).
    std::vector<Comparison> comparisons;

    int max_seeds() const;  // the most seeds evaluated in any cell
};

// The metrics a report may use without any evaluation recording them yet.
inline const std::vector<std::string>& standard_report_metrics() {
    static const std::vector<std::string> metrics{"val_loss", "val_accuracy"};
    return metrics;
}

// An unknown sweep is a UserError naming the database and the sweeps it has; so is a metric
// that no evaluation of the sweep records (other than the standard ones).
Report build_report(const Store& store, const std::string& sweep, const std::string& metric);

// Aligned for a terminal: a caption, one line per row and a "Δ vs dense" line under each
// continuation with a dense reference, a legend; "…" marks cells not evaluated yet. Then the
// noise floor, the findings and the sunk-cost table (see above).
std::string report_table(const Report& report);
// A GitHub table with the same rows ("↳ Δ vs dense" rows), under a one-line caption, and the
// same notes below it.
std::string report_markdown(const Report& report);
// One line per (row, budget): method,variant,budget_percent,n,mean,std,delta_vs_dense,
// delta_n,delta_std,delta_low,delta_high,tie,sunk_flops; a missing value is an empty field.
// delta_low/high bound the 95% interval of the paired difference, tie is 1 when it contains
// zero (0 when it does not, empty without an interval), sunk_flops is the row's pretraining's.
std::string report_csv(const Report& report);
// An object: {sweep, metric, budget_unit, lower_is_better, noise_floor, rows (the CSV's lines
// as objects), comparisons (with crossover estimates), sunk_costs}; a missing value is null.
std::string report_json(const Report& report);

// The findings in words, one line each (the table's and markdown's notes).
std::vector<std::string> report_findings(const Report& report);

// Text helpers shared with the plots.
std::string format_percent(double percent);  // 10 → "10%", 12.5 → "12.5%"
std::string metric_description(
    const std::string& metric);  // "validation loss, nats per prediction"

// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break.
std::string csv_field(const std::string& text);

}  // namespace upcycle
