// Learning-rate schedules and FLOPs accounting against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "core/flops.h"
#include "core/model/vit.h"
#include "core/optim/schedule.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

TEST(Schedule, RsqrtWarmsUpLinearlyThenDecaysAsInverseSquareRoot) {
    TrainConfig t;
    t.schedule = Schedule::Rsqrt;
    t.lr = 1e-3;
    t.warmup_steps = 100;
    EXPECT_DOUBLE_EQ(learning_rate(t, 1), 1e-5);
    EXPECT_DOUBLE_EQ(learning_rate(t, 50), 5e-4);
    EXPECT_DOUBLE_EQ(learning_rate(t, 100), 1e-3);
    EXPECT_DOUBLE_EQ(learning_rate(t, 400), 5e-4);    // sqrt(100/400) = 1/2
    EXPECT_DOUBLE_EQ(learning_rate(t, 10000), 1e-4);  // sqrt(100/10000) = 1/10
    EXPECT_FALSE(schedule_depends_on_horizon(Schedule::Rsqrt));
}

TEST(Schedule, CosineReachesItsFloorAtTheHorizon) {
    TrainConfig t;
    t.schedule = Schedule::Cosine;
    t.lr = 1.0;
    t.warmup_steps = 10;
    t.steps = 110;
    t.min_lr_ratio = 0.1;
    EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
    EXPECT_NEAR(learning_rate(t, 60), 0.55, 1e-12);  // halfway: floor + (1-floor)/2
    EXPECT_NEAR(learning_rate(t, 110), 0.1, 1e-12);
    EXPECT_NEAR(learning_rate(t, 500), 0.1, 1e-12);
    EXPECT_TRUE(schedule_depends_on_horizon(Schedule::Cosine));
}

TEST(Schedule, ConstantHoldsAfterWarmup) {
    TrainConfig t;
    t.schedule = Schedule::Constant;
    t.lr = 2.0;
    t.warmup_steps = 0;
    EXPECT_DOUBLE_EQ(learning_rate(t, 1), 2.0);
    EXPECT_DOUBLE_EQ(learning_rate(t, 123456), 2.0);
}

TEST(Flops, MatchesTheDocumentedFormula) {
    const ModelConfig m{Arch::Gpt, 256, 128, 128, 4, 4, {}};
    // 2·(L·12·C² + V·C) + L·4·T·C
    const double forward = 2.0 * (4 * 12.0 * 128 * 128 + 256.0 * 128) + 4 * 4.0 * 128 * 128;
    EXPECT_DOUBLE_EQ(flops_per_token(m).forward, forward);
    EXPECT_DOUBLE_EQ(flops_per_token(m).training, 3 * forward);
    // GPT-2 small: 124.4M parameters with the padded 50304 vocabulary
    const ModelConfig gpt2{Arch::Gpt, 50304, 1024, 768, 12, 12, {}};
    EXPECT_EQ(parameter_count(gpt2), 124475904);
}

TEST(Flops, VitCountsImageTokensPatchEmbeddingAndHead) {
    const ModelConfig m = find_model_preset("vit-tiny").model;  // patch 4, C 128, L 6
    const double C = 128, L = 6, T = 50, P = 49, pp = 16, K = 10;
    // blocks per token, plus the patch embedding and the class-token head once per image
    const double forward = 2.0 * (L * 12 * C * C + (P * pp * C + K * C) / T) + L * 4 * T * C;
    EXPECT_DOUBLE_EQ(flops_per_token(m).forward, forward);
    // the count agrees with the model's own layout, dense and MoE
    CpuBackend backend;
    EXPECT_EQ(parameter_count(m), static_cast<int64_t>(Vit(backend, m, 1).num_parameters()));
    ModelConfig moe = m;
    moe.moe.experts = 4;
    moe.moe.router = RouterKind::ExpertChoice;
    EXPECT_EQ(parameter_count(moe), static_cast<int64_t>(Vit(backend, moe, 1).num_parameters()));
    // expert choice at capacity factor 2: two expert MLPs per token in blocks 1, 3, 5
    const double moe_forward = forward + 2.0 * 3 * (8 * C * C + 4 * C);
    EXPECT_DOUBLE_EQ(flops_per_token(moe).forward, moe_forward);
}

}  // namespace
}  // namespace upcycle
