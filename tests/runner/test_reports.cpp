// `upcycle results` and `upcycle plot` on a fixture store built the way the executor fills it:
// a real sweep plan (grid upcycle.experts [4, 8] × seeds [1, 2]) with known evaluations, one
// trial still running and two pending; the comparison in every format, the row labels that
// varying grid values make, and gnuplot figures with their kept scripts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/errors.h"
#include "core/sweep/sweep.h"
#include "runner/report/plot.h"
#include "runner/report/report.h"
#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::run_cli;
using testing::TempDir;

constexpr const char* kSweep = "fixture";
constexpr double kFresh = 3600.0;
constexpr double kPretrainFlops = 2e10;
constexpr int64_t kPretrainSteps = 20;

const char* kFixtureYaml = R"(name: fixture
model:
  preset: gpt-tiny
data:
  source: synthetic
train:
  batch_size: 4
  schedule: rsqrt
  warmup_steps: 2
  seed: 1
pretrain:
  steps: 20
continue:
  budget_unit: flops
  budgets: [10, 50, 100]
  methods:
    dense: {}
    upcycle:
      experts: 4
    scratch: {}
    warmstart: {}
grid:
  upcycle.experts: [4, 8]
seeds: [1, 2]
)";

// The known validation loss of a method (and expert count) at a budget, before the seed's
// offset: seed 1 is 0.01 + e below it, seed 2 0.01 + e above, so two seeds average to it
// exactly with a sample std of (0.01 + e)·√2. The method's extra spread e makes the paired
// differences to dense (which has e = 0) spread by e·√2, a 95% half-width of t(1)·e = 12.7·e.
double base_loss(const std::string& method, int experts, double budget) {
    static const std::map<std::string, std::map<double, double>> table{
        {"dense", {{10, 2.40}, {50, 2.30}, {100, 2.20}}},
        {"upcycle4", {{10, 2.35}, {50, 2.20}, {100, 2.05}}},
        {"upcycle8", {{10, 2.38}, {50, 2.18}, {100, 2.00}}},
        {"scratch4", {{10, 3.00}, {50, 2.60}, {100, 2.30}, {200, 2.10}}},
        {"scratch8", {{10, 2.90}, {50, 2.50}, {100, 2.25}, {200, 2.05}}},
        {"warmstart", {{10, 2.39}, {50, 2.27}, {100, 2.15}}},
    };
    if (method == "pretrain") return 2.50;
    const std::string key =
        method == "upcycle" || method == "scratch" ? method + std::to_string(experts) : method;
    return table.at(key).at(budget);
}

double extra_spread(const std::string& method) {
    if (method == "upcycle") return 0.005;   // Δ −0.05 ± 0.064 at 10% (a tie), then better
    if (method == "warmstart") return 0.03;  // ± 0.38: tied everywhere
    return 0;                                // dense, scratch, the pretraining
}

double seed_offset(int seed, const std::string& method) {
    const double offset = 0.01 + extra_spread(method);
    return seed == 1 ? -offset : offset;
}

struct FixtureTrial {
    std::string method;
    int experts = 0, seed = 0;
};

FixtureTrial describe(const PlannedTrial& t) {
    FixtureTrial f;
    f.method = to_string(t.method);
    f.seed = t.config.at("run").at("train").at("seed").get<int>();
    if (t.config.contains("options") && t.config["options"].contains("experts")) {
        f.experts = t.config["options"]["experts"].get<int>();
    }
    return f;
}

// Training curves, validation points and (MoE) routing as the executor logs them: the loss
// falls from where the method starts towards its value at the end of its budget.
void log_series(Store& store, int64_t id, const FixtureTrial& f, int64_t first_step,
                int64_t steps) {
    std::vector<MetricRow> rows;
    const double flops_per_step = kPretrainFlops / kPretrainSteps;
    const bool pretrain = f.method == "pretrain";
    const double start = pretrain || f.method == "scratch" ? 5.5 : 2.6;
    const double end =
        pretrain ? 2.45 : base_loss(f.method, f.experts, f.method == "scratch" ? 200 : 100) - 0.05;
    for (int64_t s = 0; s <= steps; s += 2) {
        const double loss = end + (start - end) * std::exp(-double(s) / 6.0) + 0.01 * f.seed;
        const double flops = double(s) * flops_per_step;
        rows.push_back({"train_loss", first_step + s, flops, 0.1 * double(s), loss});
        rows.push_back({"lr", first_step + s, flops, 0.1 * double(s), 1e-3});
        if (s % 10 == 0)
            rows.push_back({"val_loss", first_step + s, flops, 0.1 * double(s), loss + 0.05});
    }
    store.add_metrics(id, rows);
    if (f.experts == 0) return;
    std::vector<RoutingRow> routing;
    for (int64_t s = 0; s <= steps; s += 4) {
        for (int layer : {1, 3}) {
            nlohmann::json counts = nlohmann::json::array();
            for (int e = 0; e < f.experts; ++e)
                counts.push_back(100 + 10 * e + 5 * layer + (e == 0 ? 15 * s : 0));
            routing.push_back({first_step + s, layer, counts, 0.02, 1.3, 1.01, 0.5});
        }
    }
    store.add_routing(id, routing);
}

// The fixture: every trial done, except upcycle experts=8 seed 2 and scratch experts=8 seed 2
// (pending) and scratch experts=8 seed 1 (running, evaluated at 10% and 50% so far).
void build_fixture(const std::filesystem::path& db) {
    const SweepSpec spec = parse_sweep(kFixtureYaml, "fixture.yaml");
    const std::vector<PlannedTrial> planned = plan_sweep(spec);
    ASSERT_EQ(planned.size(), 14u);  // per seed: pretrain, dense, 2 upcycle, 2 scratch, warmstart
    Store store(db, Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep(kSweep, kFixtureYaml, "h1", nullptr);
    std::map<std::string, FixtureTrial> by_hash;
    for (const auto& t : planned) {
        store.add_trial(sweep, t.hash, t.method, t.config,
                        t.parent_hash.empty() ? std::nullopt : std::optional(t.parent_hash));
        by_hash[t.hash] = describe(t);
    }
    std::vector<int64_t> to_release;
    while (const auto claimed = store.claim_next("fixture-worker", "host", kFresh, sweep)) {
        const FixtureTrial& f = by_hash.at(claimed->hash);
        const bool e8 = f.experts == 8;
        if (f.method == "upcycle" && e8 && f.seed == 2) {
            to_release.push_back(claimed->id);
            continue;
        }
        if (f.method == "scratch" && e8 && f.seed == 2) {
            to_release.push_back(claimed->id);
            continue;
        }
        const double offset = seed_offset(f.seed, f.method);
        const int64_t first = f.method == "pretrain" || f.method == "scratch" ? 0 : kPretrainSteps;
        log_series(store, claimed->id, f, first, kPretrainSteps);
        if (f.method == "pretrain") {
            store.add_evaluation(claimed->id, 0, kPretrainSteps, kPretrainFlops, 2.0,
                                 {{"val_loss", base_loss("pretrain", 0, 0) + offset},
                                  {"val_accuracy", 0.30 - offset}});
            store.finish(claimed->id, {kPretrainSteps, kPretrainFlops, 2.0, 1280});
            continue;
        }
        const bool running = f.method == "scratch" && e8 && f.seed == 1;
        for (const auto& m : claimed->config.at("budget").at("milestones")) {
            const double b = m.get<double>();
            if (running && b > 50) break;
            const double loss = base_loss(f.method, f.experts, b) + offset;
            store.add_evaluation(claimed->id, b, first + int64_t(b / 5), kPretrainFlops * b / 100,
                                 b / 50, {{"val_loss", loss}, {"val_accuracy", 1.0 - loss / 4.0}});
        }
        if (!running) store.finish(claimed->id, {first + 20, kPretrainFlops, 2.0, 1280});
    }
    for (int64_t id : to_release) store.release(id);
    // A second sweep with nothing run yet: every figure is skipped, no error.
    const int64_t empty = store.upsert_sweep("empty", "name: empty", "h2", nullptr);
    store.add_trial(empty, "e0", Method::Pretrain,
                    {{"method", "pretrain"}, {"run", {{"train", {{"seed", 1}}}}}}, std::nullopt);
}

class Reports : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir;
        build_fixture(db());
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static std::filesystem::path db() { return *dir_ / "upcycle.db"; }
    static Report report(const std::string& metric = "val_loss") {
        const Store store(db(), Store::Mode::ReadOnly);
        return build_report(store, kSweep, metric);
    }
    static inline TempDir* dir_ = nullptr;
};

template <class F>
std::string user_error_of(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e.what();
    }
    return "(no UserError)";
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

TEST_F(Reports, RowsAreMethodsAndTheGridValuesThatVary) {
    const Report r = report();
    std::vector<std::string> labels;
    for (const auto& row : r.rows) labels.push_back(row.label);
    EXPECT_EQ(labels, (std::vector<std::string>{"pretrained (0%)", "dense", "upcycle experts=4",
                                                "upcycle experts=8", "scratch experts=4",
                                                "scratch experts=8", "warmstart"}));
    EXPECT_EQ(r.budgets, (std::vector<double>{0, 10, 50, 100, 200}));
    EXPECT_EQ(to_string(r.budget_unit), "flops");
    EXPECT_EQ(r.status_counts.at(TrialStatus::Done), 11);
    EXPECT_EQ(r.status_counts.at(TrialStatus::Running), 1);
    EXPECT_EQ(r.status_counts.at(TrialStatus::Pending), 2);

    const ReportRow& upcycle4 = r.rows[2];
    const ReportCell* c = upcycle4.cell(50);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->n, 2);
    EXPECT_EQ(c->planned, 2);
    EXPECT_NEAR(*c->mean, 2.20, 1e-12);
    EXPECT_NEAR(*c->std, 0.015 * std::sqrt(2.0), 1e-12);
    // paired with dense seed by seed: differences −0.095 and −0.105
    EXPECT_EQ(c->vs_dense.n, 2);
    EXPECT_NEAR(*c->vs_dense.mean, -0.10, 1e-12);
    EXPECT_NEAR(*c->vs_dense.std, 0.005 * std::sqrt(2.0), 1e-12);
    EXPECT_NEAR(*c->vs_dense.half_width, 12.7062 * 0.005, 1e-9);
    EXPECT_FALSE(c->vs_dense.tie());
    EXPECT_TRUE(upcycle4.cell(10)->vs_dense.tie());  // −0.05 ± 0.064
    // one seed evaluated of two: its value, no std, and paired with dense's seed 1 only
    const ReportCell* partial = r.rows[3].cell(100);
    EXPECT_EQ(partial->n, 1);
    EXPECT_EQ(partial->planned, 2);
    EXPECT_NEAR(*partial->mean, 1.985, 1e-12);
    EXPECT_FALSE(partial->std.has_value());
    EXPECT_EQ(partial->vs_dense.n, 1);
    EXPECT_NEAR(*partial->vs_dense.mean, 1.985 - 2.19, 1e-12);
    EXPECT_FALSE(partial->vs_dense.has_interval());
    EXPECT_FALSE(partial->vs_dense.tie());
    // scratch experts=8 at 200%: planned, nothing evaluated; dense has no 200% cell
    const ReportCell* missing = r.rows[5].cell(200);
    ASSERT_NE(missing, nullptr);
    EXPECT_EQ(missing->n, 0);
    EXPECT_FALSE(missing->mean.has_value());
    EXPECT_EQ(r.rows[1].cell(200), nullptr);
    EXPECT_FALSE(r.rows[4].cell(200)->vs_dense.mean.has_value());
}

TEST_F(Reports, Table) {
    const std::string expected =
        "fixture: val_loss (validation loss, nats per prediction; lower is better), mean ± std "
        "over seeds\n"
        "columns: extra training FLOPs as % of the sunk cost (the dense pretraining); Δ vs dense: "
        "difference to dense continuation at the same budget, paired by seed, ± its 95% interval "
        "(tie: the interval contains 0)\n" +
        db().string() + ", 14 trials: 11 done, 1 running, 2 pending\n" + R"(
method                          0%                   10%                   50%                  100%             200%
-----------------  ---------------  --------------------  --------------------  --------------------  ---------------
pretrained (0%)    2.5000 ± 0.0141
dense                                    2.4000 ± 0.0141       2.3000 ± 0.0141       2.2000 ± 0.0141
upcycle experts=4                        2.3500 ± 0.0212       2.2000 ± 0.0212       2.0500 ± 0.0212
  Δ vs dense                        -0.0500 ± 0.0635 tie      -0.1000 ± 0.0635      -0.1500 ± 0.0635
upcycle experts=8                     2.3650 (1/2 seeds)    2.1650 (1/2 seeds)    1.9850 (1/2 seeds)
  Δ vs dense                                     -0.0250               -0.1250               -0.2050
scratch experts=4                        3.0000 ± 0.0141       2.6000 ± 0.0141       2.3000 ± 0.0141  2.1000 ± 0.0141
  Δ vs dense                            +0.6000 ± 0.0000      +0.3000 ± 0.0000      +0.1000 ± 0.0000
scratch experts=8                     2.8900 (1/2 seeds)    2.4900 (1/2 seeds)                     …                …
  Δ vs dense                                     +0.5000               +0.2000                     …
warmstart                                2.3900 ± 0.0566       2.2700 ± 0.0566       2.1500 ± 0.0566
  Δ vs dense                        -0.0100 ± 0.3812 tie  -0.0300 ± 0.3812 tie  -0.0500 ± 0.3812 tie

…  not evaluated yet (trial pending or running)
(1/2 seeds)  seeds evaluated there, of those planned
scratch reuses no sunk cost: its budget is its total compute

noise floor: the seed-to-seed std of a cell is 0.0141 (median of 14 cells with up to 2 seeds; 0.0141–0.0566): a difference is a finding only when its 95% interval excludes 0

what the data show (val_loss; paired by seed, 95% intervals):
  upcycle experts=4 vs dense: better at 50%, 100%; tied at 10% (Δ -0.1500 ± 0.0635 at 100%)
    upcycle overtakes dense: before the first budget run (10%); 95% range: before 10% … ≈21%
  upcycle experts=8 vs dense: one seed at 10%, 50%, 100% (no interval: not a finding) (Δ -0.2050 at 100%)
    upcycle overtakes dense: before the first budget run (10%); one seed: no range
  scratch experts=4 vs dense: worse at 10%, 50%, 100% (Δ +0.1000 ± 0.0000 at 100%)
    scratch overtakes dense: not within the budgets run (up to 100%); 95% range: beyond 100%
  scratch experts=4 vs upcycle experts=4: worse at 10%, 50%, 100% (Δ +0.2500 ± 0.0635 at 100%)
    scratch overtakes upcycle: not within the budgets run (up to 100%); 95% range: beyond 100%
    at equal total compute (the sunk cost counted): scratch at 200% vs upcycle at +100%: tied (Δ +0.0500 ± 0.0635 tie)
  scratch experts=8 vs dense: one seed at 10%, 50% (no interval: not a finding) (Δ +0.2000 at 50%)
    scratch overtakes dense: not within the budgets run (up to 50%); one seed: no range
  scratch experts=8 vs upcycle experts=8: one seed at 10%, 50% (no interval: not a finding) (Δ +0.3250 at 50%)
    scratch overtakes upcycle: not within the budgets run (up to 50%); one seed: no range
  warmstart vs dense: tied at 10%, 50%, 100% (Δ -0.0500 ± 0.3812 tie at 100%)
    warmstart overtakes dense: tied at every budget run, so no crossover can be placed
)";
    EXPECT_EQ(report_table(report()), expected) << report_table(report());
}

TEST_F(Reports, Markdown) {
    const std::string text = report_markdown(report());
    const auto lines = lines_of(text);
    ASSERT_GE(lines.size(), 4u);
    EXPECT_EQ(
        lines[0].rfind("**fixture** · `val_loss` (validation loss, nats per prediction; lower is "
                       "better), mean ± std over seeds · columns: extra training FLOPs",
                       0),
        0u)
        << lines[0];
    EXPECT_EQ(lines[1], "");
    EXPECT_EQ(lines[2], "| method | 0% | 10% | 50% | 100% | 200% |");
    EXPECT_EQ(lines[3], "| :--- | ---: | ---: | ---: | ---: | ---: |");
    const std::vector<std::string> body(lines.begin() + 4, lines.begin() + 16);
    EXPECT_EQ(
        body,
        (std::vector<std::string>{
            "| pretrained (0%) | 2.5000 ± 0.0141 | | | | |",
            "| dense | | 2.4000 ± 0.0141 | 2.3000 ± 0.0141 | 2.2000 ± 0.0141 | |",
            "| upcycle experts=4 | | 2.3500 ± 0.0212 | 2.2000 ± 0.0212 | 2.0500 ± 0.0212 | |",
            "| ↳ Δ vs dense | | -0.0500 ± 0.0635 tie | -0.1000 ± 0.0635 | -0.1500 ± 0.0635 | |",
            "| upcycle experts=8 | | 2.3650 (1/2 seeds) | 2.1650 (1/2 seeds) | 1.9850 (1/2 "
            "seeds) | |",
            "| ↳ Δ vs dense | | -0.0250 | -0.1250 | -0.2050 | |",
            "| scratch experts=4 | | 3.0000 ± 0.0141 | 2.6000 ± 0.0141 | 2.3000 ± 0.0141 | "
            "2.1000 ± 0.0141 |",
            "| ↳ Δ vs dense | | +0.6000 ± 0.0000 | +0.3000 ± 0.0000 | +0.1000 ± 0.0000 | |",
            "| scratch experts=8 | | 2.8900 (1/2 seeds) | 2.4900 (1/2 seeds) | … | … |",
            "| ↳ Δ vs dense | | +0.5000 | +0.2000 | … | |",
            "| warmstart | | 2.3900 ± 0.0566 | 2.2700 ± 0.0566 | 2.1500 ± 0.0566 | |",
            "| ↳ Δ vs dense | | -0.0100 ± 0.3812 tie | -0.0300 ± 0.3812 tie | -0.0500 ± 0.3812 "
            "tie | |",
        }))
        << text;
    // the table's notes follow in a code block
    const std::string table = report_table(report());
    const std::string notes = table.substr(table.find("\nnoise floor:"));
    EXPECT_NE(text.find("\n```" + notes + "```\n"), std::string::npos) << text;
}

TEST_F(Reports, Csv) {
    const auto lines = lines_of(report_csv(report()));
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines[0],
              "method,variant,budget_percent,n,mean,std,delta_vs_dense,delta_n,delta_std,"
              "delta_low,delta_high,tie,sunk_flops");
    // pretrained 1 + dense 3 + upcycle 3 + 3 + scratch 4 + 4 + warmstart 3
    EXPECT_EQ(lines.size(), 1u + 21u);
    for (const auto& line : lines) {
        EXPECT_EQ(std::count(line.begin(), line.end(), ','), 12) << line;
    }
    // method,variant,budget_percent → the other fields
    std::map<std::string, std::vector<std::string>> rows;
    for (std::size_t i = 1; i < lines.size(); ++i) {
        std::vector<std::string> fields;
        std::stringstream in(lines[i]);
        for (std::string field; std::getline(in, field, ',');) fields.push_back(field);
        if (lines[i].back() == ',') fields.push_back("");
        ASSERT_EQ(fields.size(), 13u) << lines[i];
        rows[fields[0] + "," + fields[1] + "," + fields[2]] =
            std::vector<std::string>(fields.begin() + 3, fields.end());
    }
    EXPECT_EQ(rows.size(), 21u);
    // n, mean, std, delta, delta_n, delta_low, delta_high, tie; sunk_flops is the pretraining's
    using Maybe = std::optional<double>;
    auto expect_row = [&](const std::string& key, const std::string& n, Maybe mean, Maybe std,
                          Maybe delta, const std::string& delta_n, Maybe low, Maybe high,
                          const std::string& tie) {
        SCOPED_TRACE(key);
        ASSERT_TRUE(rows.count(key));
        const auto& f = rows[key];
        EXPECT_EQ(f[0], n);
        EXPECT_EQ(f[4], delta_n);
        EXPECT_EQ(f[8], tie);
        EXPECT_NEAR(std::stod(f[9]), kPretrainFlops, 1e-3);
        const std::pair<int, Maybe> expected[] = {
            {1, mean}, {2, std}, {3, delta}, {6, low}, {7, high}};
        for (const auto& [i, value] : expected) {
            if (!value)
                EXPECT_EQ(f[i], "") << i;
            else
                EXPECT_NEAR(std::stod(f[i]), *value, 1e-9) << i;
        }
    };
    const double s2 = 0.01 * std::sqrt(2.0);
    const double up = 12.7062 * 0.005;  // upcycle's 95% half-width
    const Maybe none;
    expect_row("pretrain,,0", "2", 2.5, s2, none, "0", none, none, "");
    expect_row("dense,,10", "2", 2.4, s2, 0.0, "2", 0.0, 0.0, "1");
    expect_row("upcycle,experts=4,10", "2", 2.35, 0.015 * std::sqrt(2.0), -0.05, "2", -0.05 - up,
               -0.05 + up, "1");
    expect_row("upcycle,experts=4,50", "2", 2.2, 0.015 * std::sqrt(2.0), -0.1, "2", -0.1 - up,
               -0.1 + up, "0");
    expect_row("upcycle,experts=8,100", "1", 1.985, none, 1.985 - 2.19, "1", none, none, "");
    expect_row("scratch,experts=4,200", "2", 2.1, s2, none, "0", none, none, "");  // no dense
    expect_row("scratch,experts=8,50", "1", 2.49, none, 0.2, "1", none, none, "");
    expect_row("scratch,experts=8,200", "0", none, none, none, "0", none, none, "");
    expect_row("warmstart,,100", "2", 2.15, 0.04 * std::sqrt(2.0), -0.05, "2",
               -0.05 - 12.7062 * 0.03, -0.05 + 12.7062 * 0.03, "1");
}

TEST_F(Reports, Json) {
    const auto report_object = nlohmann::json::parse(report_json(report()));
    ASSERT_TRUE(report_object.is_object());
    EXPECT_EQ(report_object["sweep"], kSweep);
    EXPECT_EQ(report_object["metric"], "val_loss");
    EXPECT_EQ(report_object["budget_unit"], "flops");
    EXPECT_EQ(report_object["lower_is_better"], true);
    EXPECT_EQ(report_object["noise_floor"]["cells"], 14);
    EXPECT_NEAR(report_object["noise_floor"]["median_std"].get<double>(), 0.01 * std::sqrt(2.0),
                1e-12);
    const auto& rows = report_object["rows"];
    ASSERT_TRUE(rows.is_array());
    EXPECT_EQ(rows.size(), 21u);
    for (const auto& row : rows) {
        for (const char* key :
             {"method", "variant", "budget_percent", "n", "mean", "std", "delta_vs_dense",
              "delta_n", "delta_std", "delta_low", "delta_high", "tie", "sunk_flops", "seeds"}) {
            EXPECT_TRUE(row.contains(key)) << key << " " << row.dump();
        }
    }
    auto find = [&](const std::string& method, const std::string& variant, double budget) {
        for (const auto& row : rows) {
            if (row["method"] == method && row["variant"] == variant &&
                row["budget_percent"] == budget) {
                return row;
            }
        }
        return nlohmann::json();
    };
    const auto up = find("upcycle", "experts=4", 100);
    EXPECT_EQ(up["n"], 2);
    EXPECT_NEAR(up["mean"].get<double>(), 2.05, 1e-12);
    EXPECT_NEAR(up["delta_vs_dense"].get<double>(), -0.15, 1e-12);
    EXPECT_EQ(up["tie"], false);
    EXPECT_NEAR(up["seeds"]["1"].get<double>(), 2.035, 1e-12);
    EXPECT_NEAR(up["seeds"]["2"].get<double>(), 2.065, 1e-12);
    const auto missing = find("scratch", "experts=8", 200);
    EXPECT_EQ(missing["n"], 0);
    EXPECT_TRUE(missing["mean"].is_null());
    EXPECT_TRUE(missing["std"].is_null());
    EXPECT_TRUE(missing["delta_vs_dense"].is_null());
    EXPECT_TRUE(missing["tie"].is_null());
    EXPECT_TRUE(find("upcycle", "experts=8", 10)["std"].is_null());  // one seed

    // upcycle experts=4 against dense: tied at 10%, better beyond; the interval's upper bound
    // crosses zero between 10% and 50%: 10 + 40·(0.0635 − 0.05)/(0.0635 − 0.05 + 0.1 − 0.0635)
    const auto& comparisons = report_object["comparisons"];
    ASSERT_TRUE(comparisons.is_array());
    nlohmann::json upcycle_vs_dense, scratch_vs_upcycle;
    for (const auto& c : comparisons) {
        if (c["candidate"] == "upcycle experts=4" && c["reference"] == "dense")
            upcycle_vs_dense = c;
        if (c["candidate"] == "scratch experts=4" && c["reference"] == "upcycle experts=4")
            scratch_vs_upcycle = c;
    }
    ASSERT_FALSE(upcycle_vs_dense.is_null()) << comparisons.dump(1);
    const auto& x = upcycle_vs_dense["crossover"];
    EXPECT_EQ(x["estimate"]["where"], "before");
    EXPECT_EQ(x["earliest"]["where"], "before");
    EXPECT_EQ(x["latest"]["where"], "at");
    const double h = 12.7062 * 0.005;
    EXPECT_NEAR(x["latest"]["budget_percent"].get<double>(), 10 + 40 * (h - 0.05) / 0.05, 1e-6);
    ASSERT_FALSE(scratch_vs_upcycle.is_null()) << comparisons.dump(1);
    EXPECT_EQ(scratch_vs_upcycle["points"].size(), 3u);  // 10, 50, 100: upcycle has no 200%
    EXPECT_EQ(scratch_vs_upcycle["crossover"]["estimate"]["where"], "beyond");
    // counting the sunk cost: scratch at 200% (2.09, 2.11) against upcycle at +100% (2.035,
    // 2.065)
    const auto& equal_total = scratch_vs_upcycle["equal_total_compute"];
    ASSERT_EQ(equal_total.size(), 1u);
    EXPECT_EQ(equal_total[0]["budget_percent"], 100.0);
    EXPECT_EQ(equal_total[0]["candidate_total_percent"], 200.0);
    EXPECT_NEAR(equal_total[0]["delta"].get<double>(), 0.05, 1e-12);
    EXPECT_NEAR(equal_total[0]["high"].get<double>(), 0.05 + 12.7062 * 0.005, 1e-9);
    ASSERT_EQ(report_object["sunk_costs"].size(), 1u);
    EXPECT_EQ(report_object["sunk_costs"][0]["steps"], kPretrainSteps);
    EXPECT_NEAR(report_object["sunk_costs"][0]["flops"].get<double>(), kPretrainFlops, 1e-3);
}

TEST_F(Reports, AccuracyIsHigherIsBetter) {
    const Report r = report("val_accuracy");
    EXPECT_FALSE(r.lower_is_better);
    const std::string table = report_table(r);
    EXPECT_NE(table.find("(validation accuracy; higher is better)"), std::string::npos) << table;
    // 1 − 2.05/4 for upcycle experts=4 at 100%, and dense 1 − 2.2/4: +0.0375
    EXPECT_NEAR(*r.rows[2].cell(100)->mean, 1.0 - 2.05 / 4.0, 1e-12);
    EXPECT_NEAR(*r.rows[2].cell(100)->vs_dense.mean, 0.0375, 1e-12);
}

TEST_F(Reports, UnknownSweepOrMetricIsAUserError) {
    const Store store(db(), Store::Mode::ReadOnly);
    const std::string sweep = user_error_of([&] { build_report(store, "nope", "val_loss"); });
    EXPECT_NE(sweep.find(db().string()), std::string::npos) << sweep;
    EXPECT_NE(sweep.find("no sweep named 'nope'"), std::string::npos) << sweep;
    EXPECT_NE(sweep.find("empty, fixture"), std::string::npos) << sweep;
    const std::string metric = user_error_of([&] { build_report(store, kSweep, "bleu"); });
    EXPECT_NE(metric.find("--metric"), std::string::npos) << metric;
    EXPECT_NE(metric.find("val_accuracy, val_loss"), std::string::npos) << metric;
    // a sweep with nothing evaluated still reports its planned rows
    const Report empty = build_report(store, "empty", "val_loss");
    ASSERT_EQ(empty.rows.size(), 1u);
    EXPECT_NE(report_table(empty).find("…"), std::string::npos);
}

TEST_F(Reports, Cli) {
    if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    const std::string where = " --db " + db().string();
    const auto table = run_cli(std::string("results ") + kSweep + where);
    EXPECT_EQ(table.exit_code, 0) << table.output;
    EXPECT_EQ(table.output, report_table(report()));
    const auto csv = run_cli(std::string("results ") + kSweep + where + " --format csv");
    EXPECT_EQ(csv.output, report_csv(report()));
    const auto md = run_cli(std::string("results ") + kSweep + where + " --format markdown");
    EXPECT_EQ(md.output, report_markdown(report()));
    const auto json =
        run_cli(std::string("results ") + kSweep + where + " --format json --metric val_accuracy");
    EXPECT_EQ(json.output, report_json(report("val_accuracy")));
    const auto unknown = run_cli("results nope" + where);
    EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
    EXPECT_NE(unknown.output.find("no sweep named 'nope'"), std::string::npos) << unknown.output;
    EXPECT_NE(unknown.output.find(db().string()), std::string::npos) << unknown.output;
    const auto format = run_cli(std::string("results ") + kSweep + where + " --format xml");
    EXPECT_EQ(format.exit_code, 2) << format.output;
}

// ---- labels of other sweep shapes -----------------------------------------------------------

std::vector<TrialRecord> records_of(const std::string& yaml) {
    std::vector<TrialRecord> records;
    for (const auto& t : plan_sweep(parse_sweep(yaml, "labels.yaml"))) {
        TrialRecord r;
        r.id = static_cast<int64_t>(records.size()) + 1;
        r.hash = t.hash;
        r.method = t.method;
        r.config = t.config;
        if (!t.parent_hash.empty()) r.parent_hash = t.parent_hash;
        records.push_back(std::move(r));
    }
    return records;
}

std::set<std::string> label_set(const std::vector<TrialRecord>& records) {
    std::set<std::string> labels;
    for (const auto& l : label_trials(records)) labels.insert(l.label);
    return labels;
}

TEST(ReportLabels, AZipNamesOnlyWhatDiffersFromTheRecipe) {
    const auto records = records_of(R"(name: abl
model:
  preset: gpt-tiny
data:
  source: synthetic
continue:
  methods:
    dense: {}
    upcycle:
      experts: 4
grid:
  upcycle.capacity_factor: [1.0, 2.0]
zip:
  - upcycle.layers: [every_other, all, every_other]
    upcycle.expert_init: [copy, copy, noise]
)");
    EXPECT_EQ(label_set(records),
              (std::set<std::string>{"pretrained (0%)", "dense", "upcycle capacity_factor=1.0",
                                     "upcycle capacity_factor=1.0 layers=all",
                                     "upcycle capacity_factor=1.0 expert_init=noise",
                                     "upcycle capacity_factor=2.0",
                                     "upcycle capacity_factor=2.0 layers=all",
                                     "upcycle capacity_factor=2.0 expert_init=noise"}));
}

TEST(ReportLabels, AGridOverThePretrainingSplitsEveryRow) {
    const auto records = records_of(R"(name: width
model:
  preset: gpt-tiny
data:
  source: synthetic
continue:
  methods:
    dense: {}
    warmstart: {}
grid:
  model.channels: [32, 64]
seeds: [1, 2]
)");
    EXPECT_EQ(label_set(records),
              (std::set<std::string>{"pretrained (0%) model.channels=32",
                                     "pretrained (0%) model.channels=64", "dense model.channels=32",
                                     "dense model.channels=64", "warmstart model.channels=32",
                                     "warmstart model.channels=64"}));
    for (const auto& l : label_trials(records)) EXPECT_TRUE(l.seed == "1" || l.seed == "2");
}

// ---- plots -----------------------------------------------------------------------------------

std::string head_of(const std::filesystem::path& file, std::size_t bytes) {
    std::ifstream in(file, std::ios::binary);
    std::string text(bytes, '\0');
    in.read(text.data(), static_cast<std::streamsize>(bytes));
    text.resize(static_cast<std::size_t>(in.gcount()));
    return text;
}

// A gnuplot data file's blocks (separated by blank lines): the comment lines and the rows.
struct DatBlock {
    std::string comment;  // the '#' lines, joined
    std::vector<std::vector<double>> rows;
};

std::vector<DatBlock> dat_blocks(const std::filesystem::path& file) {
    std::vector<DatBlock> blocks;
    std::ifstream in(file);
    bool open = false;
    for (std::string line; std::getline(in, line);) {
        if (line.empty()) {
            open = false;
            continue;
        }
        if (!open) blocks.emplace_back();
        open = true;
        if (line[0] == '#') {
            blocks.back().comment += line + "\n";
            continue;
        }
        std::vector<double> row;
        std::istringstream fields(line);
        for (std::string field; fields >> field;) {
            row.push_back(field == "NaN" ? std::nan("") : std::stod(field));
        }
        blocks.back().rows.push_back(row);
    }
    return blocks;
}

// The block whose comment holds every one of `words`; fails the test when not exactly one does.
const DatBlock* find_block(const std::vector<DatBlock>& blocks,
                           const std::vector<std::string>& words) {
    const DatBlock* found = nullptr;
    int matches = 0;
    for (const auto& b : blocks) {
        bool all = true;
        for (const auto& w : words) all &= b.comment.find(w) != std::string::npos;
        if (all) {
            found = &b;
            ++matches;
        }
    }
    EXPECT_EQ(matches, 1) << words.front();
    return matches == 1 ? found : nullptr;
}

// The documented formula (plot.h), written out: α = 1 − exp(−1/max(1, 0.05·N)).
TEST_F(Reports, PlotSmoothingIsABiasCorrectedEma) {
    EXPECT_NEAR(ema_alpha(11), 1.0 - std::exp(-1.0), 1e-15);        // τ = max(1, 0.55) = 1
    EXPECT_NEAR(ema_alpha(200), 1.0 - std::exp(-1.0 / 10), 1e-15);  // τ = 10 points
    const double a = 1.0 - std::exp(-0.2);                          // 100 points: τ = 5
    std::vector<double> values(100, 1.0);
    values[0] = 3.0;
    values[1] = 2.0;
    values[2] = std::nan("");
    const std::vector<double> smoothed = ema_smoothed(values);
    ASSERT_EQ(smoothed.size(), values.size());
    EXPECT_DOUBLE_EQ(smoothed[0], 3.0);  // bias-corrected: the first value, not α·3
    EXPECT_NEAR(smoothed[1], ((1 - a) * a * 3.0 + a * 2.0) / (1 - (1 - a) * (1 - a)), 1e-12);
    EXPECT_TRUE(std::isnan(smoothed[2]));  // passed through, the average kept
    const double m3 = (1 - a) * (1 - a) * a * 3.0 + (1 - a) * a * 2.0 + a * 1.0;
    EXPECT_NEAR(smoothed[3], m3 / (1 - std::pow(1 - a, 3)), 1e-12);
    EXPECT_GT(smoothed[3], 1.5);  // smoothed, not following the raw 1.0 at once
    EXPECT_NEAR(smoothed.back(), 1.0, 1e-6);
    EXPECT_TRUE(ema_smoothed({}).empty());
}

TEST_F(Reports, PlotsEveryFigureAndKeepsTheScripts) {
    if (!find_gnuplot("gnuplot")) GTEST_SKIP() << "gnuplot is not installed (gnuplot-nox)";
    const Store store(db(), Store::Mode::ReadOnly);
    PlotOptions options;
    options.out_dir = *dir_ / "plots" / kSweep;
    // To look at the figures: UPCYCLE_TEST_PLOT_DIR=DIR test_reports --gtest_filter='*Plots*'
    if (const char* keep = std::getenv("UPCYCLE_TEST_PLOT_DIR")) options.out_dir = keep;
    const PlotOutput out = make_plots(store, kSweep, options);
    // one pretraining length: no gain-against-sunk-cost view, and a note that says why
    ASSERT_EQ(out.notes.size(), 1u);
    EXPECT_EQ(out.notes[0].rfind("sunk_cost: skipped (sweep 'fixture' has 1 sunk cost;", 0), 0u)
        << out.notes[0];
    EXPECT_FALSE(std::filesystem::exists(options.out_dir / "sunk_cost.png"));

    std::set<std::string> figures;
    for (const auto& f : out.figures) {
        ASSERT_TRUE(std::filesystem::exists(f)) << f;
        figures.insert(f.filename().string());
        if (f.extension() == ".png") {
            EXPECT_EQ(head_of(f, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << f;
        } else {
            EXPECT_NE(head_of(f, 4096).find("<svg"), std::string::npos) << f;
        }
    }
    for (const char* name : {"comparison", "differences", "training_curves"}) {
        for (const char* ext : {".png", ".svg"}) {
            EXPECT_TRUE(figures.count(std::string(name) + ext)) << name << ext;
            EXPECT_GT(std::filesystem::file_size(options.out_dir / (std::string(name) + ext)),
                      1000u)
                << name << ext;
        }
        EXPECT_TRUE(std::filesystem::exists(options.out_dir / (std::string(name) + ".gp")));
        EXPECT_TRUE(std::filesystem::exists(options.out_dir / (std::string(name) + ".dat")));
    }
    // one expert-load figure per MoE trial that logged routing: upcycle 4 ×2 seeds, upcycle 8
    // ×1, scratch 4 ×2, scratch 8 ×1 (running)
    int expert_load = 0;
    for (const auto& name : figures) {
        if (name.rfind("expert_load_", 0) == 0 && name.size() > 4 &&
            name.substr(name.size() - 4) == ".png") {
            ++expert_load;
            const std::string stem = name.substr(0, name.size() - 4);
            EXPECT_TRUE(figures.count(stem + ".svg")) << stem;
            EXPECT_TRUE(std::filesystem::exists(options.out_dir / (stem + ".gp"))) << stem;
        }
    }
    EXPECT_EQ(expert_load, 6);
    // training curves: the fifth column of each train_loss block is its EMA (plot.h)
    const auto curves = dat_blocks(options.out_dir / "training_curves.dat");
    int smoothed = 0;
    for (const auto& block : curves) {
        if (block.comment.find("(train_loss;") == std::string::npos) continue;
        ++smoothed;
        const double a = ema_alpha(block.rows.size());
        double m = 0;
        for (std::size_t k = 0; k < block.rows.size(); ++k) {
            ASSERT_EQ(block.rows[k].size(), 5u) << block.comment;
            m = (1 - a) * m + a * block.rows[k][2];
            EXPECT_NEAR(block.rows[k][4], m / (1 - std::pow(1 - a, double(k + 1))), 1e-8)
                << block.comment << k;
        }
    }
    EXPECT_EQ(smoothed, 12);  // every trial that ran: 14 − 2 pending
    // the pretraining of seed 1: 11 points (α = 1 − 1/e), starting at 5.5 + 0.01, then falling
    // as 2.45 + 3.05·exp(−s/6) + 0.01
    const DatBlock* pretrain = find_block(curves, {"pretrained (0%) seed 1 (train_loss"});
    ASSERT_NE(pretrain, nullptr);
    ASSERT_EQ(pretrain->rows.size(), 11u);
    const double a = 1 - std::exp(-1.0), x1 = 5.51, x2 = 2.46 + 3.05 * std::exp(-2.0 / 6);
    EXPECT_NEAR(pretrain->rows[0][4], x1, 1e-9);
    EXPECT_NEAR(pretrain->rows[1][2], x2, 1e-9);
    EXPECT_NEAR(pretrain->rows[1][4], ((1 - a) * a * x1 + a * x2) / (1 - (1 - a) * (1 - a)), 1e-9);
    EXPECT_TRUE(figures.count("expert_load_upcycle-experts-4_seed1_trial3.png"));
    // scratch starts far above the rest (3.0 at 10%): a second panel zooms in on the other
    // rows, from upcycle experts=8's 1.985 to the pretrained 2.5, and clips scratch's 2.89
    const std::string comparison = head_of(options.out_dir / "comparison.gp", 1 << 16);
    EXPECT_NE(comparison.find("set multiplot"), std::string::npos);
    const std::size_t range = comparison.find("set yrange [");
    ASSERT_NE(range, std::string::npos) << comparison;
    double zoom_lo = 0, zoom_hi = 0;
    ASSERT_EQ(std::sscanf(comparison.c_str() + range, "set yrange [%lf:%lf]", &zoom_lo, &zoom_hi),
              2);
    EXPECT_LT(zoom_lo, 1.985);
    EXPECT_GT(zoom_lo, 1.9);
    EXPECT_GT(zoom_hi, 2.5);
    EXPECT_LT(zoom_hi, 2.6);
    // differences: one block per continuation row with a dense reference, dense itself not
    // among them; upcycle experts=4 at 50% is −0.1 ± t(1)·0.005, experts=8 has one seed (no
    // interval), scratch experts=4 has no 200% (dense has none to pair with)
    const auto differences = dat_blocks(options.out_dir / "differences.dat");
    ASSERT_EQ(differences.size(), 5u);
    for (const auto& block : differences)
        EXPECT_EQ(block.comment.find("# dense"), std::string::npos) << block.comment;
    const DatBlock* up4 = find_block(differences, {"# upcycle experts=4 − dense"});
    ASSERT_NE(up4, nullptr);
    ASSERT_EQ(up4->rows.size(), 3u);
    const double h = 12.7062 * 0.005;
    EXPECT_EQ(up4->rows[1][0], 50);
    EXPECT_NEAR(up4->rows[1][1], -0.1, 1e-9);
    EXPECT_NEAR(up4->rows[1][2], -0.1 - h, 1e-6);
    EXPECT_NEAR(up4->rows[1][3], -0.1 + h, 1e-6);
    EXPECT_NEAR(up4->rows[1][4], h, 1e-6);
    EXPECT_EQ(up4->rows[1][5], 2);
    const DatBlock* up8 = find_block(differences, {"# upcycle experts=8 − dense"});
    ASSERT_NE(up8, nullptr);
    ASSERT_EQ(up8->rows.size(), 3u);
    EXPECT_NEAR(up8->rows[2][1], 1.985 - 2.19, 1e-9);
    EXPECT_TRUE(std::isnan(up8->rows[2][2]) && std::isnan(up8->rows[2][3]));
    const DatBlock* scratch4 = find_block(differences, {"# scratch experts=4 − dense"});
    ASSERT_NE(scratch4, nullptr);
    EXPECT_EQ(scratch4->rows.size(), 3u);
    const std::string differences_gp = head_of(options.out_dir / "differences.gp", 1 << 16);
    EXPECT_NE(differences_gp.find("Δ vs dense continuation (paired by seed, 95% interval)"),
              std::string::npos);
    EXPECT_NE(differences_gp.find("title \"dense continuation (Δ = 0)\""), std::string::npos);
    // the scripts re-draw in their own directory
    const std::string gp = head_of(options.out_dir / "comparison.gp", 1 << 16);
    EXPECT_NE(gp.find("\"comparison.dat\""), std::string::npos);
    EXPECT_EQ(gp.find(options.out_dir.string()), std::string::npos);
}

TEST_F(Reports, PlotSkipsFiguresWithoutDataAndNeedsGnuplot) {
    const Store store(db(), Store::Mode::ReadOnly);
    PlotOptions options;
    options.out_dir = *dir_ / "plots" / "empty";
    if (find_gnuplot("gnuplot")) {
        const PlotOutput out = make_plots(store, "empty", options);
        EXPECT_TRUE(out.figures.empty());
        ASSERT_EQ(out.notes.size(), 5u);
        EXPECT_EQ(out.notes[0].rfind("comparison: skipped", 0), 0u) << out.notes[0];
        EXPECT_EQ(out.notes[1].rfind("differences: skipped", 0), 0u) << out.notes[1];
        EXPECT_EQ(out.notes[2].rfind("sunk_cost: skipped", 0), 0u) << out.notes[2];
        EXPECT_EQ(out.notes[3].rfind("training_curves: skipped", 0), 0u) << out.notes[3];
        EXPECT_EQ(out.notes[4].rfind("expert_load: skipped", 0), 0u) << out.notes[4];
    }
    options.gnuplot = (*dir_ / "no-such-gnuplot").string();
    const std::string missing = user_error_of([&] { make_plots(store, kSweep, options); });
    EXPECT_NE(missing.find("gnuplot-nox"), std::string::npos) << missing;
    const std::string sweep = user_error_of([&] { make_plots(store, "nope", options); });
    EXPECT_NE(sweep.find("no sweep named 'nope'"), std::string::npos) << sweep;
}

// A sweep that grids the pretraining's length: two sunk costs (10 and 20 steps, 256 tokens a
// step), each continued by dense, upcycle, scratch and warmstart at 50% and 100%. Upcycle −
// dense is sunk_delta (per sunk cost and budget) ∓ 0.005 by seed: mean sunk_delta, 95%
// half-width t(1)·0.005; warmstart − dense is +0.02 on every seed. Scratch reuses no sunk
// cost and is left out of the figure.
const char* kSunkYaml = R"(name: sunk
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
  budget_unit: flops
  budgets: [50, 100]
  methods:
    dense: {}
    upcycle:
      experts: 4
    scratch: {}
    warmstart: {}
grid:
  pretrain.steps: [10, 20]
seeds: [1, 2]
)";
constexpr int64_t kSunkTokensPerStep = 256;

double sunk_delta(int64_t pretrain_steps, double budget) {
    // the gain shrinks as the sunk cost grows
    if (pretrain_steps == 10) return budget == 50 ? -0.20 : -0.25;
    return budget == 50 ? -0.10 : -0.12;
}

void build_sunk_cost_store(const std::filesystem::path& db) {
    const std::vector<PlannedTrial> planned = plan_sweep(parse_sweep(kSunkYaml, "sunk.yaml"));
    ASSERT_EQ(planned.size(), 20u);  // per seed and length: pretrain and 4 continuations
    std::map<std::string, int64_t> pretrain_steps;  // by pretraining hash
    for (const auto& t : planned) {
        if (t.method == Method::Pretrain)
            pretrain_steps[t.hash] = t.config.at("run").at("train").at("steps").get<int64_t>();
    }
    Store store(db, Store::Mode::ReadWrite);
    const int64_t sweep = store.upsert_sweep("sunk", kSunkYaml, "h3", nullptr);
    std::map<std::string, const PlannedTrial*> by_hash;
    for (const auto& t : planned) {
        store.add_trial(sweep, t.hash, t.method, t.config,
                        t.parent_hash.empty() ? std::nullopt : std::optional(t.parent_hash));
        by_hash[t.hash] = &t;
    }
    while (const auto claimed = store.claim_next("sunk-worker", "host", kFresh, sweep)) {
        const PlannedTrial& t = *by_hash.at(claimed->hash);
        const int seed = t.config.at("run").at("train").at("seed").get<int>();
        if (t.method == Method::Pretrain) {
            const int64_t steps = pretrain_steps.at(t.hash);
            store.add_evaluation(claimed->id, 0, steps, 1e9 * double(steps), 1.0,
                                 {{"val_loss", 3.0}});
            store.finish(claimed->id,
                         {steps, 1e9 * double(steps), 1.0, steps * kSunkTokensPerStep});
            continue;
        }
        const int64_t steps = pretrain_steps.at(t.parent_hash.empty() ? t.hash : t.parent_hash);
        for (const auto& m : claimed->config.at("budget").at("milestones")) {
            const double b = m.get<double>();
            double loss = 2.5;
            if (t.method == Method::Upcycle)
                loss += sunk_delta(steps, b) + (seed == 1 ? -0.005 : 0.005);
            if (t.method == Method::Scratch) loss += 1.0;
            if (t.method == Method::Warmstart) loss += 0.02;
            store.add_evaluation(claimed->id, b, 1, 1e9, 1.0, {{"val_loss", loss}});
        }
        store.finish(claimed->id, {20, 1e9, 1.0, 1280});
    }
}

TEST_F(Reports, PlotSunkCostDrawsTheGainAgainstEachPretrainingLength) {
    if (!find_gnuplot("gnuplot")) GTEST_SKIP() << "gnuplot is not installed (gnuplot-nox)";
    const std::filesystem::path db = *dir_ / "sunk.db";
    build_sunk_cost_store(db);
    const Store store(db, Store::Mode::ReadOnly);
    PlotOptions options;
    options.out_dir = *dir_ / "plots" / "sunk";
    if (const char* keep = std::getenv("UPCYCLE_TEST_PLOT_DIR"))
        options.out_dir = std::filesystem::path(keep) / "sunk";
    const PlotOutput out = make_plots(store, "sunk", options);
    for (const auto& note : out.notes)
        EXPECT_EQ(note.rfind("sunk_cost", 0), std::string::npos) << note;
    for (const char* ext : {".png", ".svg"}) {
        const auto file = options.out_dir / (std::string("sunk_cost") + ext);
        ASSERT_TRUE(std::filesystem::exists(file)) << file;
        EXPECT_GT(std::filesystem::file_size(file), 1000u);
    }
    EXPECT_EQ(head_of(options.out_dir / "sunk_cost.png", 8), std::string("\x89PNG\r\n\x1a\n", 8));

    // a panel each for upcycle and warmstart, one line per budget (scratch and dense are not
    // drawn), x = the tokens
    const auto blocks = dat_blocks(options.out_dir / "sunk_cost.dat");
    ASSERT_EQ(blocks.size(), 4u);
    const DatBlock* warmstart = find_block(blocks, {"# warmstart − dense at 100% extra compute"});
    ASSERT_NE(warmstart, nullptr);
    ASSERT_EQ(warmstart->rows.size(), 2u);
    EXPECT_NEAR(warmstart->rows[1][1], 0.02, 1e-9);
    EXPECT_NEAR(warmstart->rows[1][3], 0.02, 1e-9);  // no spread between the seeds
    const double h = 12.7062 * 0.005;
    for (double budget : {50.0, 100.0}) {
        const DatBlock* line = find_block(
            blocks, {"# upcycle − dense at " + format_percent(budget) + " extra compute"});
        ASSERT_NE(line, nullptr);
        ASSERT_EQ(line->rows.size(), 2u);
        for (std::size_t i = 0; i < 2; ++i) {
            const int64_t steps = i == 0 ? 10 : 20;
            SCOPED_TRACE(steps);
            const auto& row = line->rows[i];
            EXPECT_EQ(row[0], double(steps * kSunkTokensPerStep));
            EXPECT_NEAR(row[1], sunk_delta(steps, budget), 1e-9);
            EXPECT_NEAR(row[2], sunk_delta(steps, budget) - h, 1e-6);
            EXPECT_NEAR(row[3], sunk_delta(steps, budget) + h, 1e-6);
            EXPECT_EQ(row[4], 2);      // seeds paired
            EXPECT_EQ(row[5], steps);  // the pretraining's steps
        }
    }
    const std::string gp = head_of(options.out_dir / "sunk_cost.gp", 1 << 16);
    EXPECT_NE(gp.find("set logscale x"), std::string::npos);
    EXPECT_NE(gp.find("set multiplot layout 1,2"), std::string::npos);
    EXPECT_NE(gp.find("training tokens"), std::string::npos);
    EXPECT_NE(gp.find("\"2.56k (10 steps)\" 2560"), std::string::npos) << gp;
}

}  // namespace
}  // namespace upcycle
