// Sweeps whose parent is a checkpoint (pretrain.from) instead of a pretraining: the model and
// step counter come from the checkpoint, budgets are % of its declared sunk FLOPs, and the
// parent's identity is the file's content, not its path.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/flops.h"
#include "core/sha256.h"
#include "core/sweep/sweep.h"
#include "imported_model_support.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

const ModelConfig kModel{Arch::Gpt, 67, 16, 32, 2, 2, {}};
constexpr int kBatch = 8;
// the sunk cost: 20 dense steps of batch 8 × 16 tokens
constexpr double kSunkTokens = 20.0 * kBatch * 16;

std::string sweep_text(const std::filesystem::path& from, const std::string& extra = "") {
    return fmt::format(R"(name: imported
data: {{source: tokens, train_glob: "train_*.bin", val_glob: "val_*.bin"}}
train: {{batch_size: {}, lr: 0.003, warmup_steps: 2}}
pretrain: {{from: "{}"}}
continue:
  budgets: [50, 100]
  methods: {{dense: {{}}, upcycle: {{experts: 4, k: 2}}, warmstart: {{}}}}
{})",
                       kBatch, from.string(), extra);
}

template <class F>
UserError user_error(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e;
    }
    ADD_FAILURE() << "expected a UserError";
    return UserError("", "", "none");
}

TEST(SweepParentCheckpoint, PlansContinuationsFromTheCheckpointsCost) {
    TempDir dir;
    const auto ckpt = dir / "gpt.safetensors";
    testing::write_imported_checkpoint(ckpt, kModel, SunkCost{kSunkTokens, std::nullopt});
    const auto trials = plan_sweep(parse_sweep(sweep_text(ckpt), "imported.yaml"));
    ASSERT_EQ(trials.size(), 4u);  // the parent and three continuations
    const PlannedTrial& parent = trials[0];
    EXPECT_EQ(parent.method, Method::Pretrain);
    const auto from = parent_checkpoint(parent);
    ASSERT_TRUE(from);
    EXPECT_EQ(from->path, ckpt.string());
    EXPECT_EQ(from->step, 0);
    EXPECT_DOUBLE_EQ(from->sunk_flops, kSunkTokens * flops_per_token(kModel).training);
    EXPECT_EQ(from->sha256, sha256_file(ckpt));
    // the model is the checkpoint's; the step counter starts at the checkpoint's (0)
    const RunConfig parent_run = trial_run_config(parent);
    EXPECT_EQ(describe_model(parent_run.model), describe_model(kModel));
    EXPECT_EQ(parent_run.train.steps, 0);
    for (std::size_t i = 1; i < trials.size(); ++i) {
        const PlannedTrial& t = trials[i];
        EXPECT_EQ(t.parent_hash, parent.hash);
        const RunConfig run = trial_run_config(t);
        // 100 % of the sunk cost: 20 dense steps; the others' steps cost more
        if (t.method == Method::Dense) {
            EXPECT_EQ(run.train.steps, 20);
            EXPECT_EQ(*steps_for_budget(t, parent, 50), 10);
        } else {
            EXPECT_LT(run.train.steps, 20) << t.method;
            EXPECT_GE(flops_per_token(run.model).training * kBatch * 16 * run.train.steps,
                      from->sunk_flops)
                << t.method;
        }
        const auto milestones = trial_milestones(t, parent, 0);
        ASSERT_EQ(milestones.size(), 2u);
        EXPECT_EQ(milestones.back().step, run.train.steps);
    }
}

TEST(SweepParentCheckpoint, IdentityIsTheContentNotThePath) {
    TempDir dir;
    const auto a = dir / "a.safetensors";
    testing::write_imported_checkpoint(a, kModel, SunkCost{kSunkTokens, std::nullopt});
    const auto plan = [&](const std::filesystem::path& p) {
        return plan_sweep(parse_sweep(sweep_text(p), "imported.yaml"));
    };
    const auto first = plan(a);
    // the same file elsewhere: the same trials
    std::filesystem::copy_file(a, dir / "b.safetensors");
    const auto moved = plan(dir / "b.safetensors");
    for (std::size_t i = 0; i < first.size(); ++i) EXPECT_EQ(moved[i].hash, first[i].hash);
    // other weights at the same path: every trial is another one
    std::filesystem::remove(a);
    testing::write_imported_checkpoint(a, kModel, SunkCost{kSunkTokens, std::nullopt}, 4);
    const auto changed = plan(a);
    for (std::size_t i = 0; i < first.size(); ++i) EXPECT_NE(changed[i].hash, first[i].hash);
}

TEST(SweepParentCheckpoint, RefusesWhatDoesNotApply) {
    TempDir dir;
    const auto ckpt = dir / "gpt.safetensors";
    testing::write_imported_checkpoint(ckpt, kModel, SunkCost{kSunkTokens, std::nullopt});
    const auto parse = [&](const std::string& text) {
        return user_error([&] { parse_sweep(text, "imported.yaml"); });
    };
    EXPECT_EQ(parse(sweep_text(dir / "none.safetensors")).key(), "pretrain.from");
    std::string text = sweep_text(ckpt);
    text.replace(text.find("pretrain: {"), 11, "pretrain: {steps: 10, ");
    EXPECT_EQ(parse(text).key(), "pretrain.steps");
    EXPECT_EQ(parse("model: {channels: 64}\n" + sweep_text(ckpt)).key(), "model");
    text = sweep_text(ckpt);
    text.replace(text.find("  budgets"), 0, "  budget_unit: steps\n");
    EXPECT_EQ(parse(text).key(), "continue.budget_unit");
}

TEST(SweepParentCheckpoint, Gpt2UpcycleExperimentPlans) {
    // the experiment with a tiny checkpoint in place of GPT-2 (tests run in the source tree)
    TempDir dir;
    const auto ckpt = dir / "gpt.safetensors";
    testing::write_imported_checkpoint(ckpt, kModel, SunkCost{kSunkTokens, std::nullopt});
    const SweepSpec spec =
        load_sweep("experiments/gpt2_upcycle.yaml", {"pretrain.from=" + ckpt.string()});
    ASSERT_EQ(spec.points.size(), 1u);
    EXPECT_EQ(spec.points[0].budgets, (std::vector<double>{1, 2.5, 5, 10}));
    const auto trials = plan_sweep(spec);
    ASSERT_EQ(trials.size(), 4u);
    EXPECT_TRUE(parent_checkpoint(trials[0]));
    for (const auto& t : trials) {
        if (t.method != Method::Upcycle) continue;
        const RunConfig run = trial_run_config(t);
        EXPECT_EQ(run.model.moe.experts, 8);
        EXPECT_EQ(run.model.moe.k, 2);
        EXPECT_EQ(moe_layer_indices(run.model), (std::vector<int>{1}));  // every other of 2
        EXPECT_EQ(run.data.source, DataSource::Tokens);
    }
}

}  // namespace
}  // namespace upcycle
