// Expert parallelism in one process: the row bookkeeping of plan_expert_parallel on a
// hand-built table of three ranks' counts, the expert-parallel dispatcher over a 1-rank
// communicator against the local layer (bit for bit, both row layouts), and the refusal of
// experts that do not split over the ranks. The real multi-rank checks are
// tests/mpi/mpi_test_expert_parallel.cpp.
#include <gtest/gtest.h>

#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/errors.h"
#include "core/moe/expert_parallel_dispatcher.h"
#include "core/moe/moe_layer.h"
#include "core/rng.h"
#include "core/task/task.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

// Kept rows per expert of three ranks (M = 3) and six experts (E = 6, El = 2): rank 0 owns
// experts 0-1, rank 1 experts 2-3, rank 2 experts 4-5.
const std::vector<int64_t> kCounts = {
    1, 0, 2, 1, 3, 1,  // rank 0
    0, 2, 1, 1, 0, 0,  // rank 1
    2, 1, 0, 0, 1, 0,  // rank 2
};

TEST(ExpertParallelPlan, SendsEachExpertsRowsToItsOwnerAndGroupsThemThereByExpert) {
    const ExpertParallelPlan p = plan_expert_parallel(kCounts, 3, /*rank=*/1, /*P=*/0);
    EXPECT_EQ(p.first_expert, 2);
    EXPECT_EQ(p.local_experts, 2);
    // rank 1 sends its rows of experts 0-1 (0 + 2) to rank 0, of 2-3 (1 + 1) to itself
    EXPECT_EQ(p.send_rows, (std::vector<int64_t>{2, 2, 0}));
    // and receives every rank's rows of experts 2-3: 2 + 1, 1 + 1, 0 + 0
    EXPECT_EQ(p.receive_rows, (std::vector<int64_t>{3, 2, 0}));
    EXPECT_EQ(p.sent(), 4);
    EXPECT_EQ(p.received(), 5);
    // compact routing rows are already in send order: one block
    EXPECT_EQ(p.pack, (std::vector<RowBlock>{{0, 0, 4}}));
    // received: [r0 e2, r0 e2, r0 e3, r1 e2, r1 e3] → expert order [e2: r0 r0 r1 | e3: r0 r1]
    EXPECT_EQ(p.to_experts, (std::vector<RowBlock>{{0, 0, 2}, {2, 3, 1}, {3, 2, 1}, {4, 4, 1}}));
    EXPECT_EQ(p.expert_count, (std::vector<int32_t>{3, 2}));
    EXPECT_EQ(p.expert_offset, (std::vector<int32_t>{0, 3, 5}));
}

TEST(ExpertParallelPlan, PacksThePaddedLayoutsKeptRowsOnly) {
    // padded blocks of P = 3 rows per expert: expert e's kept rows start at row 3e
    const ExpertParallelPlan p = plan_expert_parallel(kCounts, 3, /*rank=*/1, /*P=*/3);
    EXPECT_EQ(p.pack, (std::vector<RowBlock>{{3, 0, 2}, {6, 2, 1}, {9, 3, 1}}));
    EXPECT_EQ(p.send_rows, (std::vector<int64_t>{2, 2, 0}));
    // the experts' side does not depend on the sender's layout
    EXPECT_EQ(p.to_experts, plan_expert_parallel(kCounts, 3, 1, 0).to_experts);
}

// What rank j sends to rank m is what m expects from j, for every pair; a rank with no
// rows for another (rank 2 sends nothing to rank 1) has an empty piece.
TEST(ExpertParallelPlan, EveryRanksSendsMatchItsPeersReceives) {
    const int M = 3;
    std::vector<ExpertParallelPlan> plans;
    for (int rank = 0; rank < M; ++rank) plans.push_back(plan_expert_parallel(kCounts, M, rank, 0));
    int64_t total_sent = 0, total_received = 0;
    for (int j = 0; j < M; ++j) {
        for (int m = 0; m < M; ++m) EXPECT_EQ(plans[j].send_rows[m], plans[m].receive_rows[j]);
        total_sent += plans[j].sent();
        total_received += plans[j].received();
        EXPECT_EQ(plans[j].expert_offset.back(), plans[j].received());
    }
    EXPECT_EQ(total_sent, 16);  // Σ kCounts
    EXPECT_EQ(total_received, 16);
    EXPECT_EQ(plans[2].send_rows, (std::vector<int64_t>{3, 0, 1}));  // nothing to rank 1
    EXPECT_EQ(plans[2].expert_count, (std::vector<int32_t>{4, 1}));
}

MoeConfig moe_config(RouterKind router, int E, int k, double cf) {
    MoeConfig m;
    m.experts = E;
    m.router = router;
    m.k = k;
    m.capacity_factor = cf;
    m.eval_capacity_factor = cf;
    m.aux_loss_coef = 0.1;
    m.z_loss_coef = 0.01;
    return m;
}

struct OneRankCase {
    RouterKind router;
    int k;
    double capacity_factor;
    bool pad_rows;
};

std::string case_name(const OneRankCase& c) {
    return std::string(c.router == RouterKind::TopK ? "topk" : "expert_choice") + "_k" +
           std::to_string(c.k) + (c.capacity_factor > 0 ? "_capacity" : "_unlimited") +
           (c.pad_rows ? "_padded" : "_compact");
}
void PrintTo(const OneRankCase& c, std::ostream* os) { *os << case_name(c); }

class ExpertParallelOneRank : public ::testing::TestWithParam<OneRankCase> {};

// Over one rank, the expert-parallel dispatcher sends every row to itself: the layer's output,
// input gradient and parameter gradients are the local layer's, bit for bit.
TEST_P(ExpertParallelOneRank, IsTheLocalLayerBitForBit) {
    const auto c = GetParam();
    CpuBackend be;
    LocalCommunicator one_rank;
    const int N = 14, C = 6, E = 4;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config(c.router, E, c.k, c.capacity_factor);
    MoeLayer local(be, model, N, c.pad_rows);
    MoeLayer parallel(be, model, N, c.pad_rows,
                      std::make_unique<ExpertParallelDispatcher>(be, one_rank, E));
    Rng rng(41);
    std::vector<float> params(moe_layer_parameters(E, C)), x(N * C), dout(N * C);
    for (auto& v : params) v = 0.5f * rng.normal();
    for (auto& v : x) v = rng.normal();
    for (auto& v : dout) v = rng.normal();
    auto p_dev = Tensor::from_host(be, {static_cast<int64_t>(params.size())}, params);
    auto x_dev = Tensor::from_host(be, {N, C}, x);
    auto dout_dev = Tensor::from_host(be, {N, C}, dout);
    const MoeTensors w = moe_tensors_in(p_dev.f32(), E, C);
    auto run = [&](MoeLayer& layer) {
        auto out = Tensor(be, {N, C});
        auto dx = Tensor::zeros(be, {N, C});
        auto grads = Tensor::zeros(be, {static_cast<int64_t>(params.size())});
        layer.forward(out.f32(), x_dev.f32(), N, w, c.capacity_factor);
        layer.backward(dx.f32(), dout_dev.f32(), x_dev.f32(), w, moe_tensors_in(grads.f32(), E, C));
        return std::vector<std::vector<float>>{out.to_host(), dx.to_host(), grads.to_host()};
    };
    const auto expected = run(local);
    EXPECT_EQ(run(parallel), expected);
    EXPECT_EQ(parallel.stats().tokens_per_expert, local.stats().tokens_per_expert);
    EXPECT_EQ(parallel.auxiliary_loss(), local.auxiliary_loss());
}

INSTANTIATE_TEST_SUITE_P(Layouts, ExpertParallelOneRank,
                         ::testing::Values(OneRankCase{RouterKind::TopK, 2, 0.75, false},
                                           OneRankCase{RouterKind::TopK, 2, 0.75, true},
                                           OneRankCase{RouterKind::TopK, 1, 0.0, false},
                                           OneRankCase{RouterKind::ExpertChoice, 1, 1.0, true}),
                         [](const ::testing::TestParamInfo<OneRankCase>& info) {
                             return case_name(info.param);
                         });

// A communicator of three ranks whose collectives are never reached (the refusal comes first).
class ThreeRanksNeverCalled final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 3; }
    void all_reduce(float*, std::size_t, ReduceOp) override { fail(); }
    void reduce_scatter(const float*, float*, std::size_t, ReduceOp) override { fail(); }
    void all_gather(const float*, float*, std::size_t) override { fail(); }
    void broadcast(float*, std::size_t, int) override { fail(); }
    void all_to_all_v(const float*, std::span<const int64_t>, float*,
                      std::span<const int64_t>) override {
        fail();
    }
    void barrier() override { fail(); }
    void all_reduce_host(double*, std::size_t, ReduceOp) override { fail(); }
    void all_gather_host(const int64_t*, int64_t*, std::size_t) override { fail(); }
    void broadcast_host(std::vector<uint8_t>&, int) override { fail(); }

private:
    [[noreturn]] static void fail() { throw std::logic_error("no collective expected"); }
};

TEST(ExpertParallelSplit, RefusesExpertsThatDoNotDivideOverTheRanks) {
    CpuBackend be;
    ThreeRanksNeverCalled three;
    try {
        ExpertParallelDispatcher dispatcher(be, three, 4);
        FAIL() << "4 experts over 3 ranks were accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "model.moe.experts");
        EXPECT_NE(e.message().find("4 experts"), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("multiple of 3"), std::string::npos) << e.message();
    }
    EXPECT_NO_THROW(ExpertParallelDispatcher(be, three, 6));
}

// The task of a config with train.expert_parallel names the config and the key; without the
// switch (or for a dense model) the same ranks build a local model.
TEST(ExpertParallelSplit, TheTaskNamesTheConfigAndTheKey) {
    CpuBackend be;
    ThreeRanksNeverCalled three;
    RunConfig config;
    config.data.source = DataSource::Synthetic;
    config.data.synthetic_bytes = 1 << 14;
    config.model = ModelConfig{Arch::Gpt, 256, 8, 16, 2, 2, {}};
    config.model.moe = moe_config(RouterKind::TopK, 4, 2, 1.0);
    config.train.batch_size = 2;
    config.train.expert_parallel = true;
    try {
        make_training_task(be, config, "ep.yaml", three);
        FAIL() << "4 experts over 3 ranks were accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.file(), "ep.yaml");
        EXPECT_EQ(e.key(), "model.moe.experts");
    }
    config.train.expert_parallel = false;
    EXPECT_NO_THROW(make_training_task(be, config, "ep.yaml", three));
}

}  // namespace
}  // namespace upcycle
