// Sweeps: SHA-256, YAML reading and --set overrides, grid × zip × seeds expansion, planning
// (shared pretraining, one trial per budget under cosine, scratch's longer horizon), stable
// hashes, budgets in steps, and the errors a person sees.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>

#include "core/errors.h"
#include "core/flops.h"
#include "core/sha256.h"
#include "core/sweep/sweep.h"

namespace upcycle {
namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    try {
        parse_sweep(yaml, "sweep.yaml", overrides);
    } catch (const UserError& e) {
        return e.what();
    }
    return "";
}

std::map<std::string, int> count_methods(const std::vector<PlannedTrial>& trials) {
    std::map<std::string, int> counts;
    for (const auto& t : trials) ++counts[to_string(t.method)];
    return counts;
}

const PlannedTrial& find_method(const std::vector<PlannedTrial>& trials,
                                const std::string& method) {
    for (const auto& t : trials) {
        if (to_string(t.method) == method) return t;
    }
    throw std::runtime_error("no " + method + " trial");
}

// parents come before their children, every parent is a planned pretraining, hashes unique
void expect_well_formed(const std::vector<PlannedTrial>& trials) {
    std::map<std::string, const PlannedTrial*> by_hash;
    for (const auto& t : trials) {
        EXPECT_EQ(t.hash, trial_hash(t.config));
        EXPECT_EQ(t.hash.size(), 64u);
        EXPECT_TRUE(by_hash.emplace(t.hash, &t).second) << "duplicate " << t.hash;
        if (t.method == Method::Pretrain) {
            EXPECT_TRUE(t.parent_hash.empty());
            EXPECT_TRUE(t.milestones.empty());
        } else {
            ASSERT_TRUE(by_hash.count(t.parent_hash)) << t.method << " before its parent";
            EXPECT_EQ(by_hash[t.parent_hash]->method, Method::Pretrain);
            EXPECT_EQ(t.config["parent"], t.parent_hash);
            ASSERT_FALSE(t.milestones.empty());
            EXPECT_TRUE(std::is_sorted(t.milestones.begin(), t.milestones.end()));
            EXPECT_DOUBLE_EQ(t.horizon_percent, t.milestones.back());
        }
    }
}

constexpr const char* kTiny = R"(name: tiny
model:
  preset: gpt-tiny
train:
  batch_size: 4
pretrain:
  steps: 100
continue:
  budgets: [10, 50]
  methods:
    dense: {}
    upcycle: {}
    scratch: {}
    warmstart: {}
)";

// ---- SHA-256 --------------------------------------------------------------------------------

TEST(Sha256, StandardVectors) {
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256_hex("abc"),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),  // 448 bits
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    EXPECT_EQ(
        sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjk"
                   "lmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),  // 896 bits
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
    // 55 bytes fit the length in one block; 56 and 63 need a second; 64 is one full block
    const std::map<std::size_t, std::string> expected = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
    };
    for (const auto& [n, digest] : expected)
        EXPECT_EQ(sha256_hex(std::string(n, 'a')), digest) << n;
}

// ---- reading and expansion --------------------------------------------------------------------

TEST(Sweep, ReadsSectionsAndFillsThePapersDefaults) {
    const auto spec = parse_sweep(kTiny, "tiny.yaml");
    EXPECT_EQ(spec.name, "tiny");
    ASSERT_EQ(spec.points.size(), 1u);
    const SweepPoint& p = spec.points[0];
    EXPECT_TRUE(p.assignments.empty());
    EXPECT_EQ(p.pretrain.model.channels, 128);  // gpt-tiny
    EXPECT_EQ(p.pretrain.train.batch_size, 4);
    EXPECT_EQ(p.pretrain.train.steps, 100);
    EXPECT_EQ(to_string(p.pretrain.train.schedule), "rsqrt");
    EXPECT_EQ(to_string(p.budget_unit), "flops");
    EXPECT_EQ(p.budgets, (std::vector<double>{10, 50}));
    const auto up = upcycle_options_from_json(p.methods["upcycle"]);
    EXPECT_EQ(up.moe.experts, 8);
    EXPECT_EQ(up.moe.k, 2);
    EXPECT_EQ(to_string(up.moe.router), "topk");
    EXPECT_EQ(up.moe.layers, "every_other");
    EXPECT_EQ(up.expert_init, "copy");
    EXPECT_EQ(up.router_init, "normal");
    EXPECT_EQ(up.optimizer_state, "reset");
    EXPECT_EQ(up.seed, 1u);  // the sweep's train.seed
    const auto ws = warmstart_options_from_json(p.methods["warmstart"]);
    EXPECT_EQ(ws.depth_multiplier, 2);
    EXPECT_EQ(ws.tiling, "stack");
    EXPECT_EQ(p.methods["dense"], nlohmann::json::object());
    // a file without a name is named by its stem; no continue section: pretraining only
    const auto bare = parse_sweep("pretrain: {steps: 10}\n", "dir/my_sweep.yaml");
    EXPECT_EQ(bare.name, "my_sweep");
    EXPECT_EQ(plan_sweep(bare).size(), 1u);
}

TEST(Sweep, GridZipAndSeedsExpandInOrder) {
    const std::string yaml = std::string(kTiny) + R"(grid:
  model.channels: [64, 128]
  upcycle.experts: [4, 8, 16]
zip:
  - train.lr: [0.001, 0.002]
    train.warmup_steps: [10, 20]
seeds: [1, 2, 3]
)";
    const auto spec = parse_sweep(yaml, "s.yaml");
    ASSERT_EQ(spec.points.size(), 3u * 2 * 3 * 2);
    EXPECT_EQ(spec.axes, (std::vector<std::string>{"model.channels", "upcycle.experts", "train.lr",
                                                   "train.warmup_steps", "train.seed"}));
    // seeds outermost, the last axis fastest; zip lists advance together
    const auto& first = spec.points[0];
    EXPECT_EQ(first.assignments,
              (std::vector<std::pair<std::string, std::string>>{{"model.channels", "64"},
                                                                {"upcycle.experts", "4"},
                                                                {"train.lr", "0.001"},
                                                                {"train.warmup_steps", "10"},
                                                                {"train.seed", "1"}}));
    EXPECT_EQ(spec.points[1].pretrain.train.warmup_steps, 20);
    EXPECT_DOUBLE_EQ(spec.points[1].pretrain.train.lr, 0.002);
    EXPECT_EQ(spec.points[2].methods["upcycle"]["experts"], 8);
    EXPECT_EQ(spec.points[6].pretrain.model.channels, 128);
    EXPECT_EQ(spec.points[12].pretrain.train.seed, 2u);
    EXPECT_EQ(spec.points[12].methods["upcycle"]["seed"], 2u);  // the seed seeds the surgery
    EXPECT_EQ(spec.points[35].pretrain.train.seed, 3u);
    // scratch takes upcycle's MoE (the same architecture)
    EXPECT_EQ(spec.points[2].methods["scratch"]["experts"], 8);

    const auto trials = plan_sweep(spec);
    expect_well_formed(trials);
    const auto counts = count_methods(trials);
    // pretraining and the dense and warmstart continuations do not depend on upcycle.experts
    EXPECT_EQ(counts.at("pretrain"), 2 * 2 * 3);
    EXPECT_EQ(counts.at("dense"), 2 * 2 * 3);
    EXPECT_EQ(counts.at("warmstart"), 2 * 2 * 3);
    EXPECT_EQ(counts.at("upcycle"), 36);
    EXPECT_EQ(counts.at("scratch"), 36);
}

TEST(Sweep, OverridesApplyBeforeAnythingElse) {
    const auto spec = parse_sweep(
        kTiny, "tiny.yaml",
        {"train.lr=0.5", "upcycle.experts=4", "continue.methods.upcycle.k=1", "budgets=[5, 20]",
         "grid.model.layers=[2, 6]", "seeds=[7]", "pretrain.steps=1e3"});
    ASSERT_EQ(spec.points.size(), 2u);
    const auto& p = spec.points[1];
    EXPECT_DOUBLE_EQ(p.pretrain.train.lr, 0.5);
    EXPECT_EQ(p.pretrain.train.steps, 1000);
    EXPECT_EQ(p.pretrain.model.layers, 6);
    EXPECT_EQ(p.pretrain.train.seed, 7u);
    EXPECT_EQ(p.methods["upcycle"]["experts"], 4);
    EXPECT_EQ(p.methods["upcycle"]["k"], 1);
    EXPECT_EQ(p.budgets, (std::vector<double>{5, 20}));
    // a method can be switched on from the command line
    const auto more =
        parse_sweep("pretrain: {steps: 10}\n", "x.yaml", {"continue.methods.dense={}"});
    EXPECT_EQ(count_methods(plan_sweep(more)).at("dense"), 1);

    const auto bad = error_of(kTiny, {"upcycle.expertz=4"});
    EXPECT_NE(bad.find("continue.methods.upcycle.expertz"), std::string::npos) << bad;
    EXPECT_NE(bad.find("did you mean 'experts'"), std::string::npos) << bad;
    EXPECT_EQ(bad.find("(line"), std::string::npos) << bad;  // not from the file: no line
    const auto overridden =
        error_of("continue:\n  methods:\n    upcycle:\n      k: 2\n", {"upcycle.k=9"});
    EXPECT_NE(overridden.find("1 ≤ k ≤ experts (8), found 9"), std::string::npos) << overridden;
    EXPECT_EQ(overridden.find("(line"), std::string::npos) << overridden;
    EXPECT_NE(error_of(kTiny, {"train.lr"}).find("key.path=value"), std::string::npos);
    EXPECT_NE(error_of(kTiny, {"train.lr=-1"}).find("positive"), std::string::npos);
}

TEST(Sweep, CanonicalConfigFillsEveryDefault) {
    // the same sweep written with every default explicit, other key orders and another name
    const std::string explicit_yaml = R"(name: another_name
model: {preset: gpt-tiny, channels: 128, moe_free: null}
train: {batch_size: 4, lr: 0.001, schedule: rsqrt, seed: 1}
eval: {every: 250}
pretrain: {steps: 100}
continue:
  budget_unit: flops
  budgets: [50, 10, 10]
  methods:
    warmstart: {depth_multiplier: 2, tiling: stack, optimizer_state: reset}
    scratch: {experts: 8, seed: 1}
    upcycle: {experts: 8, k: 2, capacity_factor: 2, layers: every_other, router_init: normal,
              expert_init: copy, noise_std: 0.01, seed: 1}
    dense:
)";
    EXPECT_NE(error_of(explicit_yaml).find("model.moe_free"),
              std::string::npos);  // typo check works
    std::string yaml = explicit_yaml;
    yaml.replace(yaml.find(", moe_free: null"), std::string(", moe_free: null").size(), "");
    const auto a = plan_sweep(parse_sweep(kTiny, "a.yaml"));
    const auto b = plan_sweep(parse_sweep(yaml, "b.yaml"));
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].hash, b[i].hash) << a[i].method << "\n"
                                        << a[i].config.dump(1) << "\n"
                                        << b[i].config.dump(1);
    }
    // the canonical config holds every key, defaults included, and no name
    const auto& up = find_method(a, "upcycle").config;
    EXPECT_FALSE(up["run"].contains("name"));
    EXPECT_EQ(up["run"]["model"]["moe"]["experts"], 8);
    EXPECT_EQ(up["run"]["train"]["beta2"], 0.95);
    EXPECT_EQ(up["options"]["z_loss_coef"], 0.001);
    EXPECT_EQ(up["options"]["drop_ratio"], 0.5);
    EXPECT_EQ(up["budget"]["unit"], "flops");
    // a changed value is another trial
    const auto c = plan_sweep(parse_sweep(kTiny, "c.yaml", {"upcycle.noise_std=0.02"}));
    EXPECT_EQ(c[0].hash, a[0].hash);
    EXPECT_NE(find_method(c, "upcycle").hash, find_method(a, "upcycle").hash);
}

TEST(Sweep, HashesAreStable) {
    // Written down once. If this fails, a change altered every stored trial's identity: make
    // sure that is intended (old results will not be reused), then update the literals.
    const auto trials = plan_sweep(parse_sweep(kTiny, "tiny.yaml"));
    ASSERT_EQ(trials.size(), 5u);
    EXPECT_EQ(to_string(trials[0].method), "pretrain");
    EXPECT_EQ(trials[0].hash, "0488c21dd4a9b1173204a012696e37e74ad9f4c83f29848ca7a43ec4e6c4d391");
    EXPECT_EQ(find_method(trials, "upcycle").hash,
              "3b345c8f9b9128638055ef2c57220c8a70d27b6702c3cfa2d69928366e40e09c");
    // the same text twice: the same hashes
    const auto again = plan_sweep(parse_sweep(kTiny, "tiny.yaml"));
    for (std::size_t i = 0; i < trials.size(); ++i) EXPECT_EQ(trials[i].hash, again[i].hash);
}

// ---- planning ---------------------------------------------------------------------------------

TEST(Sweep, SharedPretrainingCollapsesToOneTrial) {
    const auto spec =
        parse_sweep(std::string(kTiny) + "grid:\n  upcycle.experts: [4, 8, 16]\n", "s.yaml");
    ASSERT_EQ(spec.points.size(), 3u);
    const auto trials = plan_sweep(spec);
    expect_well_formed(trials);
    EXPECT_EQ(
        count_methods(trials),
        (std::map<std::string, int>{
            {"pretrain", 1}, {"dense", 1}, {"upcycle", 3}, {"scratch", 3}, {"warmstart", 1}}));
    for (const auto& t : trials) {
        if (t.method != Method::Pretrain) {
            EXPECT_EQ(t.parent_hash, trials[0].hash);
        }
    }
    // another sweep with the same pretraining (another name, other methods) shares it
    const auto other = plan_sweep(parse_sweep(
        "name: other\nmodel: {preset: gpt-tiny}\ntrain: {batch_size: 4}\npretrain: {steps: 100}\n"
        "continue: {budgets: [100], methods: {upcycle: {expert_init: drop}}}\n",
        "other.yaml"));
    EXPECT_EQ(other[0].hash, trials[0].hash);
}

TEST(Sweep, HorizonFreeScheduleMakesOneTrialPerMethodAndScratchRunsLonger) {
    const auto trials = plan_sweep(parse_sweep(kTiny, "tiny.yaml"));
    expect_well_formed(trials);
    EXPECT_EQ(
        count_methods(trials),
        (std::map<std::string, int>{
            {"pretrain", 1}, {"dense", 1}, {"upcycle", 1}, {"scratch", 1}, {"warmstart", 1}}));
    for (const auto& t : trials) {
        if (t.method == Method::Pretrain) continue;
        if (t.method == Method::Scratch) {
            EXPECT_EQ(t.milestones, (std::vector<double>{10, 50, 150}));
            EXPECT_DOUBLE_EQ(t.horizon_percent, 150);
        } else {
            EXPECT_EQ(t.milestones, (std::vector<double>{10, 50})) << t.method;
            EXPECT_DOUBLE_EQ(t.horizon_percent, 50);
        }
        EXPECT_EQ(t.config["budget"]["milestones"], nlohmann::json(t.milestones));
    }
}

TEST(Sweep, CosineMakesOneTrialPerBudget) {
    const auto trials = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.schedule=cosine"}));
    expect_well_formed(trials);
    EXPECT_EQ(
        count_methods(trials),
        (std::map<std::string, int>{
            {"pretrain", 1}, {"dense", 2}, {"upcycle", 2}, {"scratch", 3}, {"warmstart", 2}}));
    std::set<double> scratch_horizons;
    for (const auto& t : trials) {
        if (t.method == Method::Pretrain) continue;
        ASSERT_EQ(t.milestones.size(), 1u);
        if (t.method == Method::Scratch) scratch_horizons.insert(t.horizon_percent);
    }
    EXPECT_EQ(scratch_horizons, (std::set<double>{10, 50, 150}));
    EXPECT_NE(error_of(kTiny, {"train.schedule=cosine", "budget_unit=seconds"}).find("horizon"),
              std::string::npos);
}

TEST(Sweep, BudgetsInStepsFlopsAndSeconds) {
    // steps: a percentage of the pretraining's steps; the step counter carries on except in scratch
    const auto by_steps = plan_sweep(parse_sweep(kTiny, "t.yaml", {"budget_unit=steps"}));
    const PlannedTrial& pre = by_steps[0];
    const PlannedTrial& dense = find_method(by_steps, "dense");
    EXPECT_EQ(steps_for_budget(dense, pre, 10), 10);
    EXPECT_EQ(steps_for_budget(dense, pre, 50), 50);
    EXPECT_EQ(steps_for_budget(dense, pre, 12.3), 13);  // rounded up
    EXPECT_EQ(trial_run_config(dense).train.steps, 150);
    EXPECT_EQ(trial_run_config(find_method(by_steps, "scratch")).train.steps,
              150);  // restarts at 0
    EXPECT_EQ(trial_run_config(pre).train.steps, 100);

    // flops: the continuation's FLOPs reach the percentage of the pretraining's
    const auto trials = plan_sweep(parse_sweep(kTiny, "t.yaml"));
    const RunConfig dense_run = trial_run_config(trials[0]);
    const double sunk = flops_per_token(dense_run.model).training * 100;  // per token × steps
    EXPECT_EQ(steps_for_budget(find_method(trials, "dense"), trials[0], 50), 50);
    for (const std::string method : {"upcycle", "scratch", "warmstart"}) {
        const PlannedTrial& t = find_method(trials, method);
        const RunConfig run = trial_run_config(t);
        const double per_step = flops_per_token(run.model).training;
        const int64_t n = *steps_for_budget(t, trials[0], 50);
        EXPECT_GE(n * per_step, 0.5 * sunk * (1 - 1e-12)) << method;
        EXPECT_LT((n - 1) * per_step, 0.5 * sunk) << method;
        EXPECT_LT(n, 50) << method;  // every continuation model costs more per token
    }
    const RunConfig up = trial_run_config(find_method(trials, "upcycle"));
    EXPECT_EQ(up.model.moe.experts, 8);
    EXPECT_EQ(trial_run_config(find_method(trials, "warmstart")).model.layers, 8);
    EXPECT_EQ(trial_run_config(find_method(trials, "dense")).model.moe.experts, 0);
    EXPECT_EQ(up.train.steps,
              100 + *steps_for_budget(find_method(trials, "upcycle"), trials[0], 50));
    EXPECT_EQ(up.name.substr(0, 8), "upcycle-");

    // seconds: only known while running
    const auto timed = plan_sweep(parse_sweep(kTiny, "t.yaml", {"budget_unit=seconds"}));
    EXPECT_FALSE(steps_for_budget(find_method(timed, "upcycle"), timed[0], 10).has_value());
    EXPECT_EQ(find_method(timed, "upcycle").config["run"]["train"]["steps"], 0);
}

// What the executor reads back from the store equals what was planned, and the trainer's
// milestones are the budgets in steps on the trial's own step counter (or in seconds).
TEST(Sweep, PlannedTrialsReadBackAndGiveTheirMilestones) {
    for (const std::string unit : {"flops", "steps", "seconds"}) {
        SCOPED_TRACE(unit);
        const auto trials = plan_sweep(parse_sweep(kTiny, "t.yaml", {"budget_unit=" + unit}));
        for (const PlannedTrial& t : trials) {
            const PlannedTrial back = planned_trial(t.hash, t.config);
            EXPECT_EQ(back.method, t.method);
            EXPECT_EQ(back.parent_hash, t.parent_hash);
            EXPECT_EQ(back.budget_unit, t.budget_unit);
            EXPECT_EQ(back.milestones, t.milestones);
            EXPECT_EQ(back.horizon_percent, t.horizon_percent);
            if (t.method == Method::Pretrain) continue;
            const auto milestones = trial_milestones(back, trials[0], 7.0);
            ASSERT_EQ(milestones.size(), t.milestones.size());
            const int64_t base = t.method == Method::Scratch ? 0 : 100;
            for (std::size_t i = 0; i < milestones.size(); ++i) {
                EXPECT_EQ(milestones[i].percent, t.milestones[i]);
                if (unit == "seconds") {
                    EXPECT_EQ(milestones[i].step, -1);
                    EXPECT_DOUBLE_EQ(milestones[i].seconds, t.milestones[i] / 100.0 * 7.0);
                } else {
                    EXPECT_EQ(milestones[i].step,
                              base + *steps_for_budget(back, trials[0], t.milestones[i]));
                    EXPECT_LT(milestones[i].seconds, 0);
                }
            }
            // the last milestone is where the trial's run ends
            if (unit != "seconds") {
                EXPECT_EQ(milestones.back().step, trial_run_config(t).train.steps);
            }
        }
    }
    nlohmann::json bad = plan_sweep(parse_sweep(kTiny, "t.yaml"))[1].config;
    bad["method"] = "upcycel";
    try {
        planned_trial("abc", bad);
        ADD_FAILURE() << "accepted an unknown method";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "method");
        EXPECT_NE(std::string(e.what()).find("did you mean 'upcycle'"), std::string::npos)
            << e.what();
    }
}

// ---- errors ---------------------------------------------------------------------------------

void expect_error(const std::string& error, const std::vector<std::string>& parts) {
    EXPECT_FALSE(error.empty()) << "accepted";
    for (const auto& part : parts)
        EXPECT_NE(error.find(part), std::string::npos) << error << "\n  lacks: " << part;
}

TEST(SweepErrors, UnknownKeysNameFileKeyLineAndSuggestion) {
    expect_error(error_of("pretrian:\n  steps: 10\n"),
                 {"sweep.yaml", "'pretrian'", "line 1", "did you mean 'pretrain'"});
    expect_error(error_of("train:\n  lr: 0.1\n  warmup_step: 10\n"),
                 {"sweep.yaml", "train.warmup_step", "line 3", "did you mean 'warmup_steps'"});
    expect_error(
        error_of("continue:\n  budgets: [10]\n  methods:\n    upcycle:\n      expertz: 4\n"),
        {"continue.methods.upcycle.expertz", "line 5", "did you mean 'experts'"});
    expect_error(error_of("continue:\n  methods:\n    upcycel: {}\n"),
                 {"continue.methods.upcycel", "line 3", "did you mean 'upcycle'"});
    expect_error(error_of("continue:\n  budget: [10]\n"),
                 {"continue.budget", "did you mean 'budgets'"});
    expect_error(error_of("pretrain:\n  step: 10\n"),
                 {"pretrain.step", "line 2", "did you mean 'steps'"});
    expect_error(error_of("continue:\n  methods:\n    dense: {lr: 1}\n"),
                 {"continue.methods.dense.lr", "takes no keys"});
    expect_error(error_of("grid:\n  model.chanels: [64]\n"),
                 {"grid.model.chanels", "line 2", "did you mean 'channels'"});
    expect_error(error_of("continue: {methods: {dense: {}}}\ngrid:\n  upcycle.experts: [4]\n"),
                 {"grid.upcycle.experts", "line 3", "does not run upcycle"});
}

// Non-finite numbers are refused at planning, before any work, with the key and its line.
TEST(SweepErrors, NonFiniteNumbersAreRefusedAtPlanning) {
    expect_error(error_of("continue:\n  methods:\n    upcycle: {capacity_factor: .inf}\n"),
                 {"continue.methods.upcycle.capacity_factor", "expected a finite number", "'.inf'",
                  "line 3"});
    expect_error(
        error_of("continue:\n  methods:\n    upcycle:\n      eval_capacity_factor: .nan\n"),
        {"continue.methods.upcycle.eval_capacity_factor", "finite", "line 4"});
    expect_error(error_of("continue:\n  budgets: [10, .inf]\n"),
                 {"continue.budgets", "finite", "line 2"});
    expect_error(error_of("train:\n  lr: .nan\n"), {"train.lr", "finite", "line 2"});
    expect_error(error_of(kTiny, {"upcycle.capacity_factor=.nan"}),
                 {"continue.methods.upcycle.capacity_factor", "finite",
                  "(from --set upcycle.capacity_factor=.nan)"});
}

// An error about one point of a grid names the point and the key's line in the file (the
// point's tree is rebuilt without lines: never a made-up "line 1").
TEST(SweepErrors, AGridPointsErrorNamesThePointAndTheLine) {
    const auto e = error_of(
        "# a grid\nmodel:\n  preset: gpt-tiny\ntrain:\n  steps: 10\ngrid:\n  train.lr: [0.1, "
        "0.2]\n");
    expect_error(
        e, {"'train.steps'", "pretrain.steps", "(line 5)", "[at the sweep point train.lr=0.1]"});
    EXPECT_EQ(e.find("line 1)"), std::string::npos) << e;
    const auto zip = error_of("zip:\n  train.lr: [0.1, 0.2]\n  train.warmup_steps: [5, -3]\n");
    expect_error(zip, {"'train.warmup_steps'", "non-negative",
                       "[at the sweep point train.lr=0.2, train.warmup_steps=-3]"});
    EXPECT_EQ(zip.find("line 1)"), std::string::npos) << zip;
}

// Found with fuzz/fuzz_sweep.cpp (under UBSan): a budget or a pretraining so large that a
// continuation's step counter leaves int64 made plan_sweep convert an out-of-range double
// (budgets: [1e300]) or overflow a signed addition (pretrain.steps: 9e18); parse_sweep now
// refuses them, naming the key and its line.
TEST(SweepErrors, BudgetsBeyondAStepCounterAreRefused) {
    expect_error(error_of("pretrain: {steps: 10}\ncontinue:\n  budgets: [10, 1e300]\n  "
                          "methods: {dense: {}}\n"),
                 {"sweep.yaml", "'continue.budgets'", "1e+300%", "dense", "line 3"});
    expect_error(error_of("pretrain: {steps: 9e18}\ncontinue:\n  budgets: [100]\n  methods: "
                          "{upcycle: {}}\n"),
                 {"'continue.budgets'", "upcycle", "line 3"});
    expect_error(error_of("pretrain: {steps: 10}\ncontinue: {budget_unit: steps, budgets: [1e21], "
                          "methods: {scratch: {}}}\n"),
                 {"'continue.budgets'", "scratch"});
    // seconds budgets become no step counts; nothing to refuse
    EXPECT_EQ(error_of("pretrain: {steps: 10}\ncontinue: {budget_unit: seconds, budgets: [1e300], "
                       "methods: {dense: {}}}\n"),
              "");
}

TEST(SweepErrors, WrongTypesAndBadValues) {
    expect_error(error_of("pretrain:\n  steps: lots\n"),
                 {"pretrain.steps", "expected an integer", "'lots'", "line 2"});
    expect_error(error_of("pretrain:\n  steps: 0\n"), {"pretrain.steps", "positive"});
    expect_error(error_of("continue:\n  budgets: [10, 0]\n"),
                 {"continue.budgets", "> 0", "line 2"});
    expect_error(error_of("continue:\n  budgets: [-5]\n"), {"continue.budgets", "> 0"});
    expect_error(error_of("continue:\n  budgets: []\n"), {"continue.budgets", "non-empty"});
    expect_error(error_of("continue:\n  budget_unit: flop\n"),
                 {"continue.budget_unit", "did you mean 'flops'"});
    expect_error(error_of("continue:\n  methods:\n    upcycle: {expert_init: nosie}\n"),
                 {"continue.methods.upcycle.expert_init", "line 3", "did you mean 'noise'"});
    expect_error(error_of("continue:\n  methods:\n    upcycle: {experts: many}\n"),
                 {"continue.methods.upcycle.experts", "expected an integer"});
    expect_error(error_of("continue:\n  methods:\n    warmstart: {depth_multiplier: 1}\n"),
                 {"continue.methods.warmstart.depth_multiplier", "≥ 2"});
    expect_error(error_of("train:\n  steps: 10\n"), {"train.steps", "pretrain.steps", "line 2"});
    expect_error(error_of("model:\n  moe: {experts: 8}\n"), {"model.moe", "dense", "line 2"});
    expect_error(error_of("seeds: 3\n"), {"seeds", "list"});
    expect_error(error_of("seeds: [1]\ngrid: {train.seed: [1, 2]}\n"), {"train.seed", "seeds"});
}

TEST(SweepErrors, ImpossibleCombinations) {
    // expert choice would leak future tokens in a GPT: validate()'s message, at the method's key
    expect_error(error_of("continue:\n  methods:\n    upcycle:\n      router: expert_choice\n"),
                 {"continue.methods.upcycle.router", "line 4", "leaks the future"});
    expect_error(error_of("continue:\n  methods:\n    scratch: {router: expert_choice}\n"),
                 {"continue.methods.scratch.router", "leaks the future"});
    // k > E
    expect_error(error_of("continue:\n  methods:\n    upcycle:\n      experts: 4\n      k: 5\n"),
                 {"continue.methods.upcycle.k", "line 5", "1 ≤ k ≤ experts (4)"});
    expect_error(error_of("continue:\n  methods:\n    upcycle: {experts: 0}\n"),
                 {"continue.methods.upcycle.experts", "at least one expert"});
    // only at one grid point: the error names the point
    expect_error(
        error_of("continue:\n  methods:\n    upcycle: {}\ngrid:\n  upcycle.experts: [4, 1]\n"),
        {"continue.methods.upcycle.k", "1 ≤ k ≤ experts (1)",
         "[at the sweep point upcycle.experts=1]"});
    expect_error(error_of("grid:\n  model.heads: [4, 3]\n"),
                 {"model.heads", "divisible", "model.heads=3"});
}

TEST(SweepErrors, GridAndZipShapes) {
    expect_error(error_of("grid:\n  train.lr: []\n"), {"grid.train.lr", "empty", "line 2"});
    expect_error(error_of("grid:\n  train.lr: 0.1\n"),
                 {"grid.train.lr", "list of values", "line 2"});
    expect_error(error_of("zip:\n  - train.lr: [0.1, 0.2]\n    train.warmup_steps: [1, 2, 3]\n"),
                 {"zip lists must be equally long", "'train.lr' has 2 values (line 2)",
                  "'train.warmup_steps' has 3 (line 3)"});
    expect_error(error_of("grid:\n  train.lr: [0.1]\nzip:\n  - train.lr: [0.2]\n"),
                 {"train.lr", "twice"});
    expect_error(error_of("grid:\n  train.lr.x: [1]\n"), {"grid.train.lr.x", "not a section"});
    expect_error(error_of("grid:\n  train.steps: [10]\n"), {"grid.train.steps", "pretrain.steps"});
}

// ---- the shipped sweeps -------------------------------------------------------------------

// Regression: a model written key by key (no preset) with grid axes in other sections used
// to crash yaml-cpp (nodes shared between the expanded trees) or misread the file.
TEST(Sweep, ExplicitModelKeysWithGridsElsewhereExpand) {
    const auto a = parse_sweep(
        "name: x\nmodel:\n  channels: 32\ncontinue:\n  methods:\n    dense: {}\n"
        "grid:\n  train.lr: [1, 2]\n",
        "x.yaml");
    ASSERT_EQ(a.points.size(), 2u);
    EXPECT_EQ(a.points[1].pretrain.model.channels, 32);
    EXPECT_DOUBLE_EQ(a.points[1].pretrain.train.lr, 2.0);
    const auto b = parse_sweep(
        "name: x\nmodel:\n  channels: 32\ntrain: {lr: 1}\ncontinue:\n  methods:\n    dense: {}\n"
        "grid:\n  train.lr: [1, 2]\n",
        "x.yaml");
    EXPECT_EQ(b.points.size(), 2u);
    const auto c = parse_sweep(
        "name: y\nmodel: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}\n"
        "pretrain: {steps: 3}\ncontinue:\n  budgets: [50]\n  methods:\n    dense: {}\n"
        "    upcycle: {experts: 4}\ngrid:\n  upcycle.experts: [2, 4]\nseeds: [1, 2]\n",
        "y.yaml");
    EXPECT_EQ(c.points.size(), 4u);
    EXPECT_EQ(plan_sweep(c).size(), 8u);  // 2 pretrainings (seeds) × (dense + 2 upcycles)
}

// A trial's identity leaves out the keys its architecture does not read: a ViT has no
// vocabulary or context, a GPT no patch size, so neither changes the other's trials.
TEST(Sweep, IdentityIgnoresKeysOfTheOtherArchitecture) {
    const std::string vit =
        "name: v\nmodel: {arch: vit, channels: 16, layers: 2, heads: 2}\n"
        "data: {source: fashion_mnist}\npretrain: {steps: 3}\n"
        "continue:\n  budgets: [50]\n  methods:\n    dense: {}\n";
    const auto base = plan_sweep(parse_sweep(vit, "v.yaml"));
    const auto context = plan_sweep(parse_sweep(vit, "v.yaml", {"model.context=64"}));
    const auto patch = plan_sweep(parse_sweep(vit, "v.yaml", {"model.patch=7"}));
    EXPECT_EQ(base[0].hash, context[0].hash);
    EXPECT_NE(base[0].hash, patch[0].hash);
    EXPECT_FALSE(base[0].config["run"]["model"].contains("vocab_size"));
    EXPECT_TRUE(base[0].config["run"]["model"].contains("patch"));

    const auto gpt = plan_sweep(parse_sweep(kTiny, "tiny.yaml"));
    const auto gpt_patch = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"model.patch=7"}));
    EXPECT_EQ(gpt[0].hash, gpt_patch[0].hash);
    EXPECT_FALSE(gpt[0].config["run"]["model"].contains("patch"));
}

// Keys added after trial hashes were first recorded (train.micro_batch, train.precision,
// train.expert_parallel) stay out of the identity at their defaults, so earlier trials keep
// their hashes; set, they are in.
TEST(Sweep, IdentityHasNewKeysOnlyWhenSet) {
    const auto base = plan_sweep(parse_sweep(kTiny, "tiny.yaml"));
    const auto fp32 = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.precision=fp32"}));
    const auto bf16 = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.precision=bf16"}));
    const auto micro = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.micro_batch=2"}));
    const auto local = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.expert_parallel=false"}));
    const auto spread = plan_sweep(parse_sweep(kTiny, "tiny.yaml", {"train.expert_parallel=true"}));
    EXPECT_EQ(base[0].hash, fp32[0].hash);
    EXPECT_NE(base[0].hash, bf16[0].hash);
    EXPECT_NE(base[0].hash, micro[0].hash);
    EXPECT_NE(bf16[0].hash, micro[0].hash);
    EXPECT_FALSE(base[0].config["run"]["train"].contains("precision"));
    EXPECT_EQ(bf16[0].config["run"]["train"]["precision"], "bf16");
    for (std::size_t i = 0; i < base.size(); ++i) EXPECT_EQ(base[i].hash, local[i].hash);
    EXPECT_NE(base[0].hash, spread[0].hash);
    EXPECT_FALSE(base[0].config["run"]["train"].contains("expert_parallel"));
    EXPECT_EQ(spread[0].config["run"]["train"]["expert_parallel"], true);
}

// The budget in FLOPs counts a ViT's tokens (1 + patches per image), and an expert-choice MoE
// with capacity factor 2 applies two expert MLPs per token.
TEST(Sweep, VitBudgetsCountImageTokens) {
    const std::string vit =
        "name: v\nmodel: {arch: vit, channels: 16, layers: 2, heads: 2, patch: 7}\n"
        "data: {source: fashion_mnist}\ntrain: {batch_size: 8}\npretrain: {steps: 100}\n"
        "continue:\n  budgets: [100]\n  methods:\n    dense: {}\n"
        "    upcycle: {experts: 4, router: expert_choice, capacity_factor: 2}\n";
    const auto trials = plan_sweep(parse_sweep(vit, "v.yaml"));
    const auto& dense = find_method(trials, "dense");
    const auto& upcycle = find_method(trials, "upcycle");
    EXPECT_EQ(dense.config["run"]["train"]["steps"].get<int64_t>(), 200);
    const RunConfig pre = run_config_from_json(trials[0].config["run"], "t");
    const RunConfig up = run_config_from_json(upcycle.config["run"], "t");
    EXPECT_EQ(tokens_per_example(pre.model), 17);
    const double ratio = flops_per_token(pre.model).training / flops_per_token(up.model).training;
    const auto expected = static_cast<int64_t>(std::ceil(100 * ratio * (1 - 1e-12)));
    EXPECT_EQ(up.train.steps - pre.train.steps, expected);
    EXPECT_LT(expected, 100);  // the MoE costs more per token
}

TEST(Sweep, ExperimentFilesParseAndPlan) {
    const std::map<std::string, std::map<std::string, int>> expected = {
        {"experiments/quickstart.yaml",
         {{"pretrain", 3}, {"dense", 3}, {"upcycle", 3}, {"scratch", 3}, {"warmstart", 3}}},
        {"experiments/sunk_cost.yaml", {{"pretrain", 12}, {"dense", 12}, {"upcycle", 12}}},
        {"experiments/quickstart_regime.yaml", {{"pretrain", 6}, {"dense", 6}, {"upcycle", 15}}},
        {"experiments/paper_lm.yaml",
         {{"pretrain", 3}, {"dense", 3}, {"upcycle", 3}, {"scratch", 3}, {"warmstart", 3}}},
        {"experiments/ablations.yaml", {{"pretrain", 3}, {"dense", 3}, {"upcycle", 36}}},
        {"experiments/quickstart_vit.yaml",
         {{"pretrain", 1}, {"dense", 1}, {"upcycle", 1}, {"scratch", 1}, {"warmstart", 1}}},
        {"experiments/paper_vit.yaml",
         {{"pretrain", 2}, {"dense", 2}, {"upcycle", 6}, {"scratch", 6}, {"warmstart", 2}}},
    };
    std::map<std::string, std::vector<PlannedTrial>> plans;
    for (const auto& [file, counts] : expected) {
        SCOPED_TRACE(file);
        const auto trials = plan_sweep(load_sweep(file));
        expect_well_formed(trials);
        EXPECT_EQ(count_methods(trials), counts);
        plans[file] = trials;
    }
    // the quickstart's pretraining, dense continuation and paper-recipe upcycle are the
    // ablations' too: run once, shared
    const auto& quick = plans["experiments/quickstart.yaml"];
    const auto& ablations = plans["experiments/ablations.yaml"];
    EXPECT_EQ(quick[0].hash, ablations[0].hash);
    EXPECT_EQ(find_method(quick, "dense").hash, find_method(ablations, "dense").hash);
    std::set<std::string> ablation_hashes;
    for (const auto& t : ablations) ablation_hashes.insert(t.hash);
    EXPECT_TRUE(ablation_hashes.count(find_method(quick, "upcycle").hash));
    // and the sunk-cost sweep's 1,000-step point is the quickstart's dense vs upcycle
    std::set<std::string> sunk_hashes;
    for (const auto& t : plans["experiments/sunk_cost.yaml"]) sunk_hashes.insert(t.hash);
    for (const auto& t : quick) {
        if (t.method != Method::Scratch && t.method != Method::Warmstart) {
            EXPECT_TRUE(sunk_hashes.count(t.hash)) << to_string(t.method);
        }
    }
}

}  // namespace
}  // namespace upcycle
