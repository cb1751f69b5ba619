// Gradient accumulation (train.micro_batch): a step over micro-batches takes the same
// optimizer step as one over the whole batch — the model's accumulated gradients equal the
// whole batch's, and a trainer run with micro-batches follows the one without.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <span>

#include "core/model/gpt.h"
#include "core/rng.h"
#include "core/task/task.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;
using testing::tiny_synthetic_config;

// The mean gradient of a B-example batch, by one pass, and by two passes of B/2 accumulated
// and halved (what the optimizer's gradient_scale does): equal up to float rounding.
void expect_halves_accumulate_to_the_whole(const ModelConfig& config) {
    CpuBackend backend;
    const int B = 4, T = config.context;
    Gpt whole(backend, config, B);
    Gpt halves(backend, config, B / 2);
    whole.init_weights(3);
    halves.init_weights(3);
    const testing::TextBatch batch = testing::random_text_batch(B, T, config.vocab_size, 5);
    const std::size_t half = static_cast<std::size_t>(B / 2) * T;

    const double whole_loss =
        whole.forward(batch.inputs, batch.targets, B, Pass::Train).mean_loss();
    whole.backward();
    const std::span<const int32_t> inputs(batch.inputs), targets(batch.targets);
    double halves_loss = 0;
    for (int part = 0; part < 2; ++part) {
        halves_loss += 0.5 * halves
                                 .forward(inputs.subspan(part * half, half),
                                          targets.subspan(part * half, half), B / 2, Pass::Train)
                                 .mean_loss();
        halves.backward(part == 0 ? Gradients::Overwrite : Gradients::Accumulate);
    }
    EXPECT_NEAR(halves_loss, whole_loss, 1e-6 * whole_loss);

    const auto g_whole = whole.gradients().to_host();
    const auto g_halves = halves.gradients().to_host();
    float largest = 0, worst = 0;
    for (std::size_t i = 0; i < g_whole.size(); ++i) {
        largest = std::max(largest, std::abs(g_whole[i]));
        worst = std::max(worst, std::abs(0.5f * g_halves[i] - g_whole[i]));
    }
    ASSERT_GT(largest, 0.0f);
    EXPECT_LT(worst, 1e-5f * largest) << "largest gradient " << largest;

    // negative control: without Accumulate the second pass overwrites the first
    halves.forward(inputs.subspan(0, half), targets.subspan(0, half), B / 2, Pass::Train);
    halves.backward();
    halves.forward(inputs.subspan(half, half), targets.subspan(half, half), B / 2, Pass::Train);
    halves.backward(Gradients::Overwrite);
    const auto g_last = halves.gradients().to_host();
    float differs = 0;
    for (std::size_t i = 0; i < g_whole.size(); ++i) {
        differs = std::max(differs, std::abs(g_last[i] - g_whole[i]));
    }
    EXPECT_GT(differs, 1e-3f * largest);
}

TEST(GradientAccumulation, DenseGptHalvesAccumulateToTheWholeBatch) {
    expect_halves_accumulate_to_the_whole(ModelConfig{Arch::Gpt, 256, 8, 16, 2, 2, {}});
}

// Token-choice routing without a capacity limit decides each token alone, and the z-loss is
// a mean over tokens, so micro-batches change nothing. (The load-balancing loss is a product
// of batch means and a capacity is a share of the batch: with those, micro-batches route
// differently — documented at train.micro_batch.)
TEST(GradientAccumulation, MoeGptHalvesAccumulateToTheWholeBatch) {
    ModelConfig config{Arch::Gpt, 256, 8, 16, 2, 2, {}};
    config.moe.experts = 4;
    config.moe.k = 2;
    config.moe.capacity_factor = 0;
    config.moe.eval_capacity_factor = 0;
    config.moe.aux_loss_coef = 0;
    config.moe.z_loss_coef = 1e-3;
    expect_halves_accumulate_to_the_whole(config);
}

struct StepFigures {
    std::vector<double> loss, grad_norm;
};

StepFigures train_and_record(const RunConfig& config, const std::filesystem::path& dir) {
    CpuBackend backend;
    StepFigures out;
    TrainObserver observer;
    observer.on_step = [&](const StepRecord& r) {
        out.loss.push_back(r.loss);
        out.grad_norm.push_back(r.grad_norm);
    };
    TrainOptions options;
    options.out_dir = dir;
    train(backend, config, options, observer);
    return out;
}

// The trainer draws the same examples in micro-batches and takes the same steps: losses and
// gradient norms follow the whole-batch run up to float rounding (which AdamW's division by
// √v can amplify a little over the steps; measured max |Δloss| ≈ 1e-6 here).
TEST(GradientAccumulation, TrainerWithMicroBatchesFollowsTheWholeBatchRun) {
    TempDir dir;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 12;
    const StepFigures whole = train_and_record(config, dir / "whole");
    config.train.micro_batch = config.train.batch_size / 4;
    const StepFigures micro = train_and_record(config, dir / "micro");
    ASSERT_EQ(whole.loss.size(), micro.loss.size());
    for (std::size_t i = 0; i < whole.loss.size(); ++i) {
        EXPECT_NEAR(micro.loss[i], whole.loss[i], 1e-4) << "step " << i + 1;
        EXPECT_NEAR(micro.grad_norm[i], whole.grad_norm[i], 1e-3 * whole.grad_norm[i])
            << "step " << i + 1;
    }
    EXPECT_LT(whole.loss.back(), whole.loss.front());  // it trained
}

TEST(GradientAccumulation, MicroBatchSizeAndCount) {
    TrainConfig train;
    train.batch_size = 32;
    EXPECT_EQ(micro_batch_size(train), 32);
    EXPECT_EQ(micro_batches(train), 1);
    train.micro_batch = 8;
    EXPECT_EQ(micro_batch_size(train), 8);
    EXPECT_EQ(micro_batches(train), 4);
}

}  // namespace
}  // namespace upcycle
