// `upcycle results` on a sweep that grids the pretraining length (the sunk-cost axis): each
// pretraining's cost from its recorded totals, the paired differences of upcycle to dense for
// each sunk cost, the table that lists them, and the crossovers, on a store filled with
// known values the way the executor fills it.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/sweep/sweep.h"
#include "runner/report/report.h"
#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

constexpr const char* kYaml = R"(name: sunk
model:
  preset: gpt-tiny
data:
  source: synthetic
train:
  batch_size: 4
  schedule: rsqrt
  warmup_steps: 2
pretrain:
  steps: 10
continue:
  budgets: [50, 100]
  methods:
    dense: {}
    upcycle:
      experts: 4
grid:
  pretrain.steps: [10, 40]
seeds: [1, 2, 3]
)";

// Upcycle − dense, before seed noise: behind at 50% and ahead at 100% after the short
// pretraining; ahead at both after the long one.
double true_difference(int64_t pretrain_steps, double budget) {
    if (pretrain_steps == 10) return budget == 50 ? 0.02 : -0.04;
    return budget == 50 ? -0.03 : -0.06;
}

// Per-seed noise of the difference: mean zero over seeds 1–3, sample std 0.001.
double seed_noise(int seed) { return 0.001 * (seed - 2); }

Report build(const std::filesystem::path& db) {
    const std::vector<PlannedTrial> planned = plan_sweep(parse_sweep(kYaml, "sunk.yaml"));
    Store store(db, Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("sunk", kYaml, "h", nullptr);
    std::map<std::string, const PlannedTrial*> by_hash;
    std::map<std::string, int64_t> pretrain_steps_of;  // pretraining hash → its steps
    for (const auto& t : planned) {
        store.add_trial(sweep, t.hash, t.method, t.config,
                        t.parent_hash.empty() ? std::nullopt : std::optional(t.parent_hash));
        by_hash[t.hash] = &t;
        if (t.method == Method::Pretrain)
            pretrain_steps_of[t.hash] = t.config["run"]["train"]["steps"].get<int64_t>();
    }
    while (const auto claimed = store.claim_next("w", "host", 3600, sweep)) {
        const PlannedTrial& t = *by_hash.at(claimed->hash);
        const int seed = t.config["run"]["train"]["seed"].get<int>();
        if (t.method == Method::Pretrain) {
            const int64_t steps = pretrain_steps_of.at(t.hash);
            store.add_evaluation(claimed->id, 0, steps, 0, 0, {{"val_loss", 3.0}});
            store.finish(claimed->id, {steps, 1e9 * double(steps), 1.0, 64 * steps});
            continue;
        }
        const int64_t steps = pretrain_steps_of.at(t.parent_hash);
        for (const double b : {50.0, 100.0}) {
            // dense's own seed effect (0.05 per seed) is shared by upcycle: pairing cancels it
            const double dense = 2.5 - 0.001 * b + 0.05 * seed;
            const double loss = t.method == Method::Dense
                                    ? dense
                                    : dense + true_difference(steps, b) + seed_noise(seed);
            store.add_evaluation(claimed->id, b, 0, 0, 0, {{"val_loss", loss}});
        }
        store.finish(claimed->id, {steps, 1.0, 1.0, 1});
    }
    return build_report(store, "sunk", "val_loss");
}

TEST(ReportSunkCost, EachPretrainingHasItsCostAndItsDifferences) {
    TempDir dir;
    const Report report = build(dir / "u.db");
    ASSERT_EQ(report.sunk_costs.size(), 2u);
    const SunkCost& short_run = report.sunk_costs.at("train.steps=10");
    const SunkCost& long_run = report.sunk_costs.at("train.steps=40");
    EXPECT_EQ(short_run.steps, 10);
    EXPECT_EQ(short_run.finished, 3);
    EXPECT_DOUBLE_EQ(short_run.flops, 1e10);
    EXPECT_DOUBLE_EQ(long_run.tokens, 64 * 40);

    // The half-width: t(2) · 0.001 / √3 for every cell.
    const double half_width = 4.3027 * 0.001 / std::sqrt(3.0);
    int checked = 0;
    for (const auto& row : report.rows) {
        if (row.method != Method::Upcycle) continue;
        const int64_t steps = row.base == "train.steps=10" ? 10 : 40;
        for (const double b : {50.0, 100.0}) {
            const PairedDifference& d = row.cell(b)->vs_dense;
            EXPECT_EQ(d.n, 3);
            EXPECT_NEAR(*d.mean, true_difference(steps, b), 1e-12) << row.label << " " << b;
            EXPECT_NEAR(*d.half_width, half_width, 1e-6);
            EXPECT_FALSE(d.tie());
            ++checked;
        }
    }
    EXPECT_EQ(checked, 4);

    // Crossovers: after the short pretraining upcycle overtakes dense between 50% and 100%,
    // at 50 + 50·0.02/0.06; after the long one before the first budget.
    std::map<std::string, Crossover> crossovers;
    for (const auto& c : report.comparisons) crossovers[c.base] = c.crossover;
    ASSERT_EQ(crossovers.size(), 2u);
    EXPECT_EQ(crossovers["train.steps=10"].estimate.where, CrossingBound::Where::At);
    EXPECT_NEAR(crossovers["train.steps=10"].estimate.budget, 50 + 50 * 0.02 / 0.06, 1e-9);
    EXPECT_EQ(crossovers["train.steps=40"].estimate.where, CrossingBound::Where::Before);

    const std::string table = report_table(report);
    const auto at = table.find("Δ vs dense for each pretraining continued");
    ASSERT_NE(at, std::string::npos) << table;
    const std::string sunk = table.substr(at);
    EXPECT_NE(sunk.find("train.steps=10  10 steps, 0.00064M tokens, 10 GFLOP  +0.0200 ± 0.0025  "
                        "-0.0400 ± 0.0025"),
              std::string::npos)
        << sunk;
    EXPECT_NE(sunk.find("train.steps=40  40 steps, 0.00256M tokens, 40 GFLOP  -0.0300 ± 0.0025  "
                        "-0.0600 ± 0.0025"),
              std::string::npos)
        << sunk;
    EXPECT_NE(table.find("upcycle overtakes dense: at ≈67%"), std::string::npos) << table;
}

TEST(ReportSunkCost, OnePretrainingPrintsNoSunkCostTable) {
    TempDir dir;
    const std::filesystem::path db = dir / "u.db";
    build(db);
    const Store store(db, Store::Mode::ReadOnly);
    // The table is for comparing sunk costs: with one left there is nothing to compare.
    Report report = build_report(store, "sunk", "val_loss");
    report.sunk_costs.erase("train.steps=40");
    EXPECT_EQ(report_table(report).find("for each pretraining continued"), std::string::npos);
}

}  // namespace
}  // namespace upcycle
