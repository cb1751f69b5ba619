// `upcycle run` of a sweep whose parent is an imported checkpoint (pretrain.from): nothing is
// pretrained, the parent is evaluated on the sweep's token files, its declared sunk cost is
// its FLOPs, and each continuation spends its budgets as % of it.
#include <gtest/gtest.h>

#include <fstream>

#include <fmt/format.h>

#include "core/flops.h"
#include "imported_model_support.h"
#include "runner/store/store.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::run_cli;
using testing::TempDir;

TEST(RunParentCheckpoint, ContinuesAnImportedModelOnTokenFiles) {
    if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    TempDir dir;
    const ModelConfig m{Arch::Gpt, 67, 16, 32, 2, 2, {}};
    const double sunk_tokens = 20.0 * 8 * 16;  // 20 dense steps of batch 8
    testing::write_imported_checkpoint(dir / "gpt.safetensors", m, {sunk_tokens, std::nullopt});
    testing::write_token_shard(dir / "train_000001.bin", 4000, 67, 1);
    testing::write_token_shard(dir / "val_000000.bin", 600, 67, 2);
    std::ofstream(dir / "sweep.yaml") << fmt::format(
        R"(name: imported
data: {{source: tokens, train_glob: "{0}/train_*.bin", val_glob: "{0}/val_*.bin"}}
train: {{batch_size: 8, lr: 0.003, warmup_steps: 2, log_every: 5}}
eval: {{every: 0, max_windows: 16}}
checkpoint: {{every: 0}}
pretrain: {{from: "{0}/gpt.safetensors"}}
continue:
  budgets: [50, 100]
  methods: {{dense: {{}}, upcycle: {{experts: 4, k: 2}}}}
)",
        dir.path().string());
    const auto db = dir / "u.db";
    const std::string args = "run " + (dir / "sweep.yaml").string() + " --db " + db.string() +
                             " --runs " + (dir / "runs").string();
    auto result = run_cli(args);
    ASSERT_EQ(result.exit_code, 0) << result.output;

    Store store(db, Store::Mode::ReadOnly);
    const auto trials = store.trials("imported");
    ASSERT_EQ(trials.size(), 3u);
    const double sunk_flops = sunk_tokens * flops_per_token(m).training;
    for (const auto& t : trials) {
        EXPECT_EQ(to_string(t.status), "done") << t.method << ": " << t.error;
        const auto evals = store.evaluations_of_trial(t.id);
        if (t.method == Method::Pretrain) {
            // adopted, not trained: its FLOPs are the declared cost, evaluated once at step 0
            EXPECT_EQ(t.step, 0);
            EXPECT_DOUBLE_EQ(t.flops, sunk_flops);
            ASSERT_EQ(evals.size(), 1u);
            EXPECT_TRUE(evals[0].metrics.contains("val_loss"));
            continue;
        }
        ASSERT_EQ(evals.size(), 2u) << t.method;
        EXPECT_GE(evals[1].flops, sunk_flops) << t.method;  // 100 % of the sunk cost
        EXPECT_LT(evals[0].flops, sunk_flops) << t.method;
        if (t.method == Method::Dense) {
            EXPECT_EQ(t.step, 20);  // counted on from the checkpoint's step 0
        }
    }
    // a rerun does no work
    result = run_cli(args);
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("3 done"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace upcycle
