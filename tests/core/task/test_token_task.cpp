// Training on token files from an imported checkpoint: `train --from` with data.source
// tokens, evaluated on the validation files, and a run cut off and resumed draws the same
// batches (the data stream is in the checkpoint) and ends bit-identical.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <fstream>

#include "core/checkpoint.h"
#include "core/data/token_shards.h"
#include "core/import/imported_gpt.h"
#include "core/train.h"
#include "imported_model_support.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

// A random dense GPT imported with a declared cost, written as a checkpoint.
std::filesystem::path imported_model(const TempDir& dir, const ModelConfig& m) {
    testing::write_imported_checkpoint(dir / "imported.safetensors", m,
                                       SunkCost{1e6, std::nullopt});
    return dir / "imported.safetensors";
}

TEST(TokenTask, TrainsFromAnImportedCheckpointAndResumesExactly) {
    TempDir dir;
    const ModelConfig m{Arch::Gpt, 67, 16, 32, 2, 2, {}};
    testing::write_token_shard(dir / "train_000001.bin", 3000, 67, 1);
    testing::write_token_shard(dir / "train_000002.bin", 2000, 67, 2);
    testing::write_token_shard(dir / "val_000000.bin", 600, 67, 3);
    const auto from = imported_model(dir, m);

    RunConfig config = read_checkpoint(from).config;
    EXPECT_EQ(config.data.source, DataSource::Tokens);
    config.data.train_glob = (dir / "train_*.bin").string();
    config.data.val_glob = (dir / "val_*.bin").string();
    config.train.batch_size = 4;
    config.train.steps = 8;
    config.train.warmup_steps = 2;
    config.train.lr = 3e-3;
    config.eval.every = 4;
    config.checkpoint.every = 0;
    config.checkpoint.every_seconds = 0;
    auto backend = make_backend("cpu");

    TrainOptions straight;
    straight.out_dir = dir / "straight";
    straight.init_from = from;
    std::vector<EvalRecord> evals;
    TrainObserver record_evals;
    record_evals.on_eval = [&](const EvalRecord& r) { evals.push_back(r); };
    train(*backend, config, straight, record_evals);
    ASSERT_EQ(evals.size(), 2u);                                 // steps 4 and 8
    EXPECT_EQ(evals.back().result.tokens, (600 - 1) / 16 * 16);  // every validation window
    EXPECT_TRUE(std::isfinite(evals.back().result.loss));

    std::atomic<bool> stop{false};
    TrainObserver observer;
    observer.on_step = [&](const StepRecord& r) {
        if (r.step == 3) stop = true;
    };
    TrainOptions first;
    first.out_dir = dir / "resumed";
    first.init_from = from;
    first.stop_requested = &stop;
    train(*backend, config, first, observer);
    TrainOptions second = first;
    second.stop_requested = nullptr;
    train(*backend, config, second);
    testing::expect_checkpoints_bit_identical(dir / "straight", dir / "resumed");

    // the imported sunk cost is where the FLOPs count starts
    const Checkpoint end = read_checkpoint(checkpoint_path(dir / "straight"));
    EXPECT_EQ(end.state.step, 8);
    EXPECT_GT(end.state.flops, read_checkpoint(from).state.flops);
}

TEST(TokenTask, MissingGlobAndForeignTokensAreUserErrors) {
    TempDir dir;
    const ModelConfig m{Arch::Gpt, 67, 16, 32, 2, 2, {}};
    testing::write_token_shard(dir / "train.bin", 3000, 300, 1);  // ids up to 299: not this model's
    testing::write_token_shard(dir / "val.bin", 600, 67, 3);
    RunConfig config = read_checkpoint(imported_model(dir, m)).config;
    config.train.steps = 1;
    auto backend = make_backend("cpu");
    TrainOptions options;
    options.out_dir = dir / "out";
    try {
        train(*backend, config, options);
        ADD_FAILURE() << "expected a UserError";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "data.train_glob");
    }
    config.data.train_glob = (dir / "train.bin").string();
    config.data.val_glob = (dir / "val.bin").string();
    try {
        train(*backend, config, options);
        ADD_FAILURE() << "expected a UserError";
    } catch (const UserError& e) {
        EXPECT_EQ(e.file(), (dir / "train.bin").string());
        EXPECT_NE(std::string(e.what()).find("outside the model's vocabulary"), std::string::npos);
    }
}

}  // namespace
}  // namespace upcycle
