// The communication plan (bench --plan) against the formulas worked by hand for a tiny MoE
// GPT, and its refusals of sizes that do not divide.
#include <gtest/gtest.h>

#include "core/errors.h"
#include "core/flops.h"
#include "core/parallel/communication_plan.h"

namespace upcycle {
namespace {

// V 256, T 16, C 8, L 2, H 2; E 4 top-2 in block 1 only (every other).
CommunicationPlanInput tiny_moe_job() {
    CommunicationPlanInput in;
    in.model.vocab_size = 256;
    in.model.context = 16;
    in.model.channels = 8;
    in.model.layers = 2;
    in.model.heads = 2;
    in.model.moe.experts = 4;
    in.model.moe.k = 2;
    in.global_batch = 8;
    in.micro_batch = 1;
    in.ranks = 4;
    in.expert_parallel = 2;
    in.link_bytes_per_second = 1e9;
    in.compute_flops_per_second = 1e12;
    return in;
}

TEST(CommunicationPlan, CountsTheBytesOfEachCollectiveByHand) {
    const CommunicationPlanInput in = tiny_moe_job();
    const CommunicationPlan plan = plan_communication(in);
    EXPECT_EQ(plan.examples_per_rank, 2);
    EXPECT_EQ(plan.passes_per_step, 2);
    EXPECT_EQ(plan.moe_layers, 1);
    // experts: 4 × (fc [32,8] + 32 + proj [8,32] + 8) = 4 × 552
    EXPECT_EQ(plan.expert_parameters, 4 * 552);
    const double P = static_cast<double>(parameter_count(in.model));
    EXPECT_EQ(plan.parameters, parameter_count(in.model));
    // ring over 4 ranks: 2·3/4 of P floats of 4 bytes
    EXPECT_DOUBLE_EQ(plan.all_reduce_bytes, 6.0 * P);
    // experts sharded over M = 2: the rest over 4 ranks, half the experts over 2 ranks
    EXPECT_DOUBLE_EQ(plan.sharded_all_reduce_bytes, 6.0 * (P - 2208) + 4.0 * 1104);
    // 4 all-to-alls × 1 block × 2 passes × (16 tokens · 2 rows) × 1/2 off rank × 8 · 4 bytes
    EXPECT_DOUBLE_EQ(plan.all_to_all_bytes, 4.0 * 2 * 32 * 0.5 * 32);
    EXPECT_DOUBLE_EQ(plan.all_to_all_seconds, plan.all_to_all_bytes / 1e9);
    EXPECT_DOUBLE_EQ(plan.compute_seconds, flops_per_token(in.model).training * 2 * 16 / 1e12);
    EXPECT_DOUBLE_EQ(plan.step_over_compute(),
                     (plan.compute_seconds + plan.all_reduce_seconds + plan.all_to_all_seconds) /
                         plan.compute_seconds);
}

TEST(CommunicationPlan, OneRankMovesNothing) {
    CommunicationPlanInput in = tiny_moe_job();
    in.ranks = 1;
    in.expert_parallel = 1;
    const CommunicationPlan plan = plan_communication(in);
    EXPECT_EQ(plan.all_reduce_bytes, 0);
    EXPECT_EQ(plan.all_to_all_bytes, 0);
    EXPECT_DOUBLE_EQ(plan.step_over_compute(), 1.0);
}

TEST(CommunicationPlan, RefusesSizesThatDoNotDivide) {
    auto key_of = [](const CommunicationPlanInput& in) {
        try {
            plan_communication(in);
        } catch (const UserError& e) {
            return e.key();
        }
        return std::string("accepted");
    };
    CommunicationPlanInput in = tiny_moe_job();
    in.expert_parallel = 3;  // divides neither 4 ranks nor 4 experts
    EXPECT_EQ(key_of(in), "--ep");
    in = tiny_moe_job();
    in.ranks = 8;
    in.expert_parallel = 8;  // divides the ranks, not the 4 experts
    EXPECT_EQ(key_of(in), "--ep");
    in = tiny_moe_job();
    in.global_batch = 6;  // not a multiple of 4 ranks
    EXPECT_EQ(key_of(in), "--ranks");
    in = tiny_moe_job();
    in.micro_batch = 3;  // does not divide 2 examples per rank
    EXPECT_EQ(key_of(in), "--micro-batch");
    in = tiny_moe_job();
    in.model.moe.experts = 0;  // dense: nothing to spread over 2 ranks
    EXPECT_EQ(key_of(in), "--ep");
}

}  // namespace
}  // namespace upcycle
