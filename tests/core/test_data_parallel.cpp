// The pieces of data parallelism that one process can check (the ranks themselves run in
// tests/mpi/mpi_test_data_parallel.cpp): how a batch splits over the ranks, AdamW on shards
// of the parameters (ZeRO-1), and the train.zero_stage key.
#include <gtest/gtest.h>

#include <vector>

#include "core/config.h"
#include "core/data_parallel.h"
#include "core/errors.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"
#include "core/optim/data_parallel_adamw.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

TEST(BatchSplit, GivesEachRankItsPartsOfTheBatch) {
    TrainConfig train;
    train.batch_size = 16;
    train.micro_batch = 0;
    const BatchSplit one = split_batch(train, 1, "test");
    EXPECT_EQ(one.micro_batch, 16);
    EXPECT_EQ(one.parts_per_rank, 1);

    const BatchSplit four = split_batch(train, 4, "test");  // one pass of B/N per rank
    EXPECT_EQ(four.micro_batch, 4);
    EXPECT_EQ(four.parts_per_rank, 1);
    EXPECT_EQ(four.first_part(3), 3);

    train.micro_batch = 2;
    const BatchSplit accumulating = split_batch(train, 4, "test");
    EXPECT_EQ(accumulating.micro_batch, 2);
    EXPECT_EQ(accumulating.parts_per_rank, 2);
    EXPECT_EQ(accumulating.total_parts(), 8);
    EXPECT_EQ(accumulating.first_part(1), 2);
    EXPECT_EQ(split_batch(train, 1, "test").parts_per_rank, 8);
}

TEST(BatchSplit, RefusesABatchThatDoesNotDivideIntoRanksTimesMicroBatches) {
    TrainConfig train;
    train.batch_size = 12;
    train.micro_batch = 0;
    EXPECT_THROW(split_batch(train, 5, "run.yaml"), UserError);
    train.micro_batch = 4;  // 12 = 3 micro-batches, not a multiple of 2 ranks
    try {
        split_batch(train, 2, "run.yaml");
        ADD_FAILURE() << "12 examples were split into 2 ranks × micro-batches of 4";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "train.batch_size");
        const std::string what = e.what();
        EXPECT_NE(what.find("run.yaml"), std::string::npos) << what;
        EXPECT_NE(what.find("train.micro_batch"), std::string::npos) << what;
    }
    train.micro_batch = 3;  // 12 = 2 ranks × 2 micro-batches of 3
    EXPECT_EQ(split_batch(train, 2, "run.yaml").parts_per_rank, 2);
}

TEST(ZeroShard, EqualShardsCoverTheBufferThePastTheEndOnesPadded) {
    EXPECT_EQ(zero_shard(10, 0, 4).begin, 0u);
    EXPECT_EQ(zero_shard(10, 0, 4).end, 3u);
    EXPECT_EQ(zero_shard(10, 3, 4).begin, 9u);
    EXPECT_EQ(zero_shard(10, 3, 4).end, 12u);  // padded past the 10 parameters
    EXPECT_EQ(zero_shard(12, 3, 4).size(), 3u);
}

// Updating the shards one by one (each with its shard of the gradients and the global norm)
// is the update of the whole buffer, to the bit: the same elementwise arithmetic, the same
// weight decay per element (matrices only), wherever a shard's edges cut a parameter.
TEST(AdamWShards, TheShardsUpdatesAreTheWholeUpdate) {
    CpuBackend backend;
    ModelConfig model = testing::tiny_synthetic_config().model;
    const auto layout = parameter_layout(model);
    const std::size_t n = layout.back().offset + layout.back().numel;
    TrainConfig train;
    train.weight_decay = 0.5;
    train.grad_clip = 0.1;  // clipped: the shards need the global norm
    Rng rng(3);
    std::vector<float> start(n), gradients(n);
    for (auto& x : start) x = static_cast<float>(rng.normal());
    for (auto& g : gradients) g = static_cast<float>(rng.normal());

    Tensor whole_params = Tensor::from_host(backend, {static_cast<int64_t>(n)}, start);
    const Tensor whole_grads = Tensor::from_host(backend, {static_cast<int64_t>(n)}, gradients);
    AdamW whole(backend, n);
    OptimizerStepStats whole_stats;
    for (int step = 0; step < 3; ++step) {
        whole_stats = whole.update(layout, whole_params, whole_grads, train, 1e-2, 0.5);
    }
    EXPECT_LT(whole_stats.clip_scale, 1.0);

    constexpr int kRanks = 3;
    Tensor sharded_params = Tensor::from_host(backend, {static_cast<int64_t>(n)}, start);
    for (int r = 0; r < kRanks; ++r) {
        AdamW shard(backend, n, zero_shard(n, r, kRanks));
        std::vector<float> shard_grads(shard.shard().size(), 0.0f);
        for (std::size_t i = shard.shard().begin; i < std::min(shard.shard().end, n); ++i) {
            shard_grads[i - shard.shard().begin] = gradients[i];
        }
        for (int step = 0; step < 3; ++step) {
            const auto stats = shard.update_shard(layout, sharded_params, shard_grads.data(), train,
                                                  1e-2, 0.5, whole_stats.grad_norm);
            EXPECT_EQ(stats.clip_scale, whole_stats.clip_scale);
        }
    }
    EXPECT_EQ(sharded_params.to_host(), whole_params.to_host());
    // and a layout rule that decayed every element would not be: the biases differ
    EXPECT_NE(whole_params.to_host(), start);
}

// On one rank ZeRO-1 is plain AdamW: nothing is sharded.
TEST(DataParallelAdamW, OneRankKeepsEveryMoment) {
    CpuBackend backend;
    DataParallelAdamW optimizer(backend, local_communicator(), 100, 1);
    EXPECT_FALSE(optimizer.sharded());
    EXPECT_TRUE(optimizer.adamw().holds_all());
    EXPECT_EQ(optimizer.adamw().exp_avg().numel(), 100);
}

// train.zero_stage: 0 or 1, and out of a trial's identity unless set (1-rank trials keep
// their hashes).
TEST(ZeroStageKey, IsValidatedAndInTheIdentityOnlyWhenSet) {
    RunConfig config = testing::tiny_synthetic_config();
    EXPECT_FALSE(to_identity_json(config)["train"].contains("zero_stage"));
    config.train.zero_stage = 1;
    EXPECT_NO_THROW(validate(config, "run.yaml"));
    EXPECT_EQ(to_identity_json(config)["train"]["zero_stage"], 1);
    EXPECT_EQ(run_config_from_json(to_json(config), "run.json").train.zero_stage, 1);
    config.train.zero_stage = 3;
    try {
        validate(config, "run.yaml");
        ADD_FAILURE() << "ZeRO stage 3 was taken";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "train.zero_stage");
    }
}

}  // namespace
}  // namespace upcycle
