// Training runs: resume after a stop is bit-identical to an uninterrupted run; checkpoints
// carry everything; a checkpoint from another config is refused.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/surgery/upcycle.h"
#include "core/train.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::expect_checkpoints_bit_identical;
using testing::TempDir;
using testing::tiny_synthetic_config;
using testing::train_straight_and_resumed;

std::vector<nlohmann::json> read_log(const std::filesystem::path& dir) {
    std::vector<nlohmann::json> records;
    std::ifstream in(dir / "log.jsonl");
    std::string line;
    while (std::getline(in, line)) records.push_back(nlohmann::json::parse(line));
    return records;
}

// dir/forged.safetensors: dir's checkpoint with its metadata edited (and a checksum that
// matches, so only the edit is wrong).
std::filesystem::path forge_checkpoint(
    const std::filesystem::path& dir,
    const std::function<void(std::map<std::string, std::string>&)>& edit) {
    auto file = read_safetensors(checkpoint_path(dir));
    edit(file.metadata);
    std::vector<TensorView> views;
    for (const auto& name : file.order) {
        views.push_back({name, file.tensors.at(name).shape, file.tensors.at(name).data.data()});
    }
    const auto forged = dir / "forged.safetensors";
    write_safetensors(forged, views, file.metadata);
    return forged;
}

TEST(Train, StopAndResumeIsBitIdenticalToAnUninterruptedRun) {
    CpuBackend backend;
    const RunConfig config = tiny_synthetic_config();
    TempDir straight_dir, resumed_dir;

    // the second run stops after step 7 (a mid-interval step, not a checkpoint boundary)
    const auto runs =
        train_straight_and_resumed(backend, config, 7, straight_dir.path(), resumed_dir.path());
    const auto& a = runs.straight;
    const auto& b = runs.resumed;
    ASSERT_TRUE(a.completed);
    EXPECT_FALSE(runs.partial.completed);
    EXPECT_EQ(runs.partial.steps, 7);
    ASSERT_TRUE(b.completed);
    EXPECT_TRUE(b.resumed);
    EXPECT_EQ(b.resumed_from_step, 7);

    // Every logged loss, and the final evaluation, bit for bit.
    const auto log_a = read_log(straight_dir.path());
    const auto log_b = read_log(resumed_dir.path());
    ASSERT_EQ(log_a.size(), log_b.size());
    for (std::size_t i = 0; i < log_a.size(); ++i) {
        EXPECT_EQ(log_a[i]["kind"], log_b[i]["kind"]);
        EXPECT_EQ(log_a[i]["step"], log_b[i]["step"]);
        if (log_a[i]["kind"] == "train") {
            EXPECT_EQ(log_a[i]["loss"].get<double>(), log_b[i]["loss"].get<double>())
                << "record " << i;
        } else {
            EXPECT_EQ(log_a[i]["val_loss"].get<double>(), log_b[i]["val_loss"].get<double>());
        }
    }
    EXPECT_EQ(a.final_eval->loss, b.final_eval->loss);
    EXPECT_EQ(a.state.tokens, b.state.tokens);
    EXPECT_DOUBLE_EQ(a.state.flops, b.state.flops);

    // Final weights and optimizer moments are identical.
    expect_checkpoints_bit_identical(straight_dir.path(), resumed_dir.path());
}

// A run whose loss goes non-finite stops at that step with the step named, and its last
// checkpoint (the one continuations would start from) holds only finite numbers.
TEST(Train, DivergenceStopsTheRunAtTheFirstNonFiniteStep) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.lr = 1e4;
    config.train.warmup_steps = 0;
    config.train.grad_clip = 0;
    config.train.steps = 40;
    config.checkpoint.every = 1;
    TempDir dir;
    TrainOptions options;
    options.out_dir = dir.path();
    int64_t diverged_at = 0;
    try {
        train(backend, config, options);
        FAIL() << "a run at lr 1e4 trained 40 steps without a non-finite loss";
    } catch (const TrainingDiverged& e) {
        diverged_at = e.step();
        EXPECT_NE(
            std::string(e.what()).find("training diverged at step " + std::to_string(e.step())),
            std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("train.lr is 10000"), std::string::npos) << e.what();
    }
    ASSERT_GT(diverged_at, 0);
    for (const auto& record : read_log(dir.path())) {
        EXPECT_LT(record["step"].get<int64_t>(), diverged_at);
        if (record["kind"] == "train") {
            EXPECT_TRUE(record["loss"].is_number_float());  // a non-finite one is written null
        }
    }
    if (diverged_at > 1) {
        const Checkpoint ckpt = read_checkpoint(checkpoint_path(dir.path()));
        EXPECT_EQ(ckpt.state.step, diverged_at - 1);
        for (const auto& [name, tensor] : ckpt.file.tensors) {
            for (float x : tensor.data) ASSERT_TRUE(std::isfinite(x)) << name;
        }
    }
}

TEST(Train, CheckpointRoundTripKeepsWeightsMomentsAndState) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 3;
    TempDir dir;
    TrainOptions options;
    options.out_dir = dir.path();
    const auto summary = train(backend, config, options);

    const auto ckpt = read_checkpoint(checkpoint_path(dir.path()));
    EXPECT_EQ(to_json(ckpt.config), to_json(config));
    EXPECT_EQ(ckpt.state.step, 3);
    EXPECT_EQ(ckpt.optimizer_step, 3);
    EXPECT_TRUE(ckpt.has_optimizer);
    EXPECT_EQ(ckpt.state.tokens, 3 * config.train.batch_size * config.model.context);
    EXPECT_EQ(ckpt.state.data_rng, summary.state.data_rng);
    for (const char* key : {"git_revision", "build_type", "host", "time", "backend"}) {
        const auto provenance = nlohmann::json::parse(ckpt.metadata.at("upcycle.provenance"));
        EXPECT_TRUE(provenance.contains(key)) << key;
    }

    // Loading into a fresh model and optimizer reproduces what was saved.
    Gpt model(backend, ckpt.config.model, 2);
    AdamW optimizer(backend, model.num_parameters());
    load_into(ckpt, model, &optimizer);
    EXPECT_EQ(optimizer.step(), 3);
    const auto params = model.parameters().to_host();
    const auto m = optimizer.exp_avg().to_host();
    for (const auto& info : model.layout()) {
        const auto& w = ckpt.file.tensors.at(info.name).data;
        const auto& saved_m = ckpt.file.tensors.at(kOptimizerExpAvgPrefix + info.name).data;
        for (std::size_t i = 0; i < info.numel; ++i) {
            ASSERT_EQ(params[info.offset + i], w[i]) << info.name;
            ASSERT_EQ(m[info.offset + i], saved_m[i]) << info.name;
        }
    }
}

TEST(Train, RefusesToResumeACheckpointWithADifferentConfig) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 2;
    TempDir dir;
    TrainOptions options;
    options.out_dir = dir.path();
    train(backend, config, options);
    config.train.lr = 1e-2;
    try {
        train(backend, config, options);
        FAIL() << "expected a UserError";
    } catch (const UserError& e) {
        EXPECT_NE(std::string(e.what()).find("train.lr"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("checkpoint.safetensors"), std::string::npos)
            << e.what();
    }
    options.resume = false;  // --restart
    EXPECT_TRUE(train(backend, config, options).completed);
}

TEST(Train, CheckpointWhoseTensorsDoNotMatchItsConfigIsRejected) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 1;
    TempDir dir;
    TrainOptions options;
    options.out_dir = dir.path();
    train(backend, config, options);
    // Rewrite the file claiming one more layer than its tensors have.
    const auto forged = forge_checkpoint(dir.path(), [](auto& metadata) {
        auto json = nlohmann::json::parse(metadata.at("upcycle.config"));
        json["model"]["layers"] = 3;
        metadata["upcycle.config"] = json.dump();
    });
    try {
        read_checkpoint(forged);
        FAIL() << "expected a UserError";
    } catch (const UserError& e) {
        EXPECT_NE(std::string(e.what()).find("blocks.2."), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("forged.safetensors"), std::string::npos) << e.what();
    }
}

// A checkpoint whose training counters are negative (or not finite) is refused by every
// reader, naming the metadata key: a resume would count its budget from there.
TEST(Train, CheckpointWithNegativeCountersIsRejected) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 1;
    TempDir dir;
    TrainOptions options;
    options.out_dir = dir.path();
    train(backend, config, options);
    for (const auto& [key, value] :
         std::vector<std::pair<std::string, std::string>>{{"upcycle.step", "-5"},
                                                          {"upcycle.tokens", "-1"},
                                                          {"upcycle.flops", "-1e9"},
                                                          {"upcycle.seconds", "-0.5"},
                                                          {"upcycle.seconds", "inf"},
                                                          {"upcycle.optimizer_step", "-2"}}) {
        const auto forged =
            forge_checkpoint(dir.path(), [&](auto& metadata) { metadata[key] = value; });
        try {
            read_checkpoint(forged);
            FAIL() << key << " = " << value << " was accepted";
        } catch (const UserError& e) {
            EXPECT_EQ(e.key(), key) << e.what();
        }
        if (key != "upcycle.optimizer_step") {
            EXPECT_THROW(read_training_state(forged), UserError) << key;
        }
    }
}

// Budget milestones: evaluated and checkpointed when reached, once, and a resumed run does not
// repeat the ones behind it; with stop_at_last_milestone the run completes at the last one.
TEST(Train, MilestonesAreEvaluatedOnceAndCanEndTheRun) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 100;  // an upper bound: the milestones end it
    config.eval.every = 0;
    TempDir dir;
    std::atomic<bool> stop{false};
    std::vector<std::pair<double, int64_t>> seen;
    TrainObserver observer;
    observer.on_milestone = [&](const Milestone& m, const EvalRecord& r) {
        seen.emplace_back(m.percent, r.step);
        EXPECT_GT(r.result.tokens, 0);
    };
    observer.on_step = [&](const StepRecord& r) {
        if (r.step == 5) stop = true;
    };
    TrainOptions options;
    options.out_dir = dir.path();
    options.milestones = {{10, 3, -1}, {25, 8, -1}, {50, 12, -1}};
    options.stop_at_last_milestone = true;
    options.stop_requested = &stop;
    const auto first = train(backend, config, options, observer);
    EXPECT_FALSE(first.completed);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], (std::pair<double, int64_t>{10, 3}));

    stop = false;
    observer.on_step = nullptr;
    const auto second = train(backend, config, options, observer);
    EXPECT_TRUE(second.completed);
    EXPECT_EQ(second.steps, 12);
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[1], (std::pair<double, int64_t>{25, 8}));
    EXPECT_EQ(seen[2], (std::pair<double, int64_t>{50, 12}));
    EXPECT_EQ(read_checkpoint(checkpoint_path(dir.path())).state.step, 12);
}

// Continuation: an upcycled checkpoint trains on from the dense step counter, with its MoE
// config, and the step-0 loss equals the dense model's (copy init, renormalized, no limit).
TEST(Train, ContinuesFromASurgeryCheckpoint) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 4;
    config.model.layers = 2;
    TempDir dense_dir, moe_dir;
    TrainOptions dense_options;
    dense_options.out_dir = dense_dir.path();
    const auto dense = train(backend, config, dense_options);

    UpcycleOptions upcycle;
    upcycle.moe.experts = 4;
    upcycle.moe.combine = Combine::Renormalized;
    upcycle.moe.capacity_factor = 0;
    upcycle.moe.eval_capacity_factor = 0;
    const auto moe =
        upcycle_checkpoint(read_checkpoint(checkpoint_path(dense_dir.path())), upcycle);
    const auto moe_path = dense_dir / "moe.safetensors";
    write_checkpoint(moe_path, moe, backend);

    RunConfig continued = moe.config;
    continued.train.steps = 7;
    TrainOptions options;
    options.out_dir = moe_dir.path();
    options.init_from = moe_path;
    std::vector<double> losses;
    std::vector<EvalResult> evals;
    TrainObserver observer;
    observer.on_step = [&](const StepRecord& r) { losses.push_back(r.loss); };
    const auto summary = train(backend, continued, options, observer);
    EXPECT_TRUE(summary.initialized_from_checkpoint);
    EXPECT_EQ(summary.state.step, 7);
    EXPECT_EQ(losses.size(), 3u);  // steps 5, 6, 7
    EXPECT_EQ(summary.state.tokens, 7 * config.train.batch_size * config.model.context);
    EXPECT_GT(summary.state.flops, dense.state.flops);

    // a run whose model differs from the checkpoint's is refused, naming the key
    RunConfig mismatched = continued;
    mismatched.model.moe.experts = 2;
    TempDir other;
    options.out_dir = other.path();
    try {
        train(backend, mismatched, options);
        FAIL() << "expected a UserError";
    } catch (const UserError& e) {
        EXPECT_NE(std::string(e.what()).find("model.moe.experts"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace upcycle
