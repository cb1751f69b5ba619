// Expert parallelism over real ranks: ctest starts this binary under `mpirun -np 2` and `-np 4`
// (CMakeLists.txt, "MPI tests"). Every rank has its own tokens (uneven counts); each rank also
// runs the 1-rank (local) layer on every rank's tokens, so it knows what the expert-parallel
// layer must give it:
//   - its output, input gradient, combine-weight gradients (dslot_weight) and router gradient
//     are the local layer's on its own tokens;
//   - the gradient of an expert is, on the expert's owner, the sum over ranks of the local
//     layers' gradients, and zero elsewhere (so the average over ranks is the mean gradient);
//   - a whole MoE GPT on M ranks with one micro-batch each, after the gradient average, has
//     the loss and gradient of one process accumulating the same M micro-batches.
// Tolerances: the expert GEMMs see the same rows in another grouping, and the experts'
// gradients sum the ranks' rows in one GEMM instead of rank by rank, so results agree to
// float rounding, not bit for bit: |got − want| ≤ 1e-5·max(1, |want|) for what a rank
// computes from its own rows, 1e-4·max(1, |want|) for sums over ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/errors.h"
#include "core/model/gpt.h"
#include "core/moe/expert_parallel_dispatcher.h"
#include "core/moe/moe_layer.h"
#include "core/moe/routing_buffers.h"
#include "core/optim/adamw.h"
#include "core/rng.h"
#include "core/task/task.h"
#include "kernels/comm/mpi_communicator.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

MpiCommunicator& world() {
    static MpiCommunicator comm(/*collective_timeout_seconds=*/120);
    return comm;
}

constexpr int kChannels = 6;  // C

// Rank r's tokens: uneven counts.
int tokens_of(int r) { return 5 + 3 * r; }

// |got − want| ≤ tolerance·max(1, |want|), or ≤ tolerance·max(floor, |want|) with a floor.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tolerance,
                  const std::string& what, double floor = 1.0) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int reported = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double bound = tolerance * std::max(floor, std::fabs(static_cast<double>(want[i])));
        if (std::fabs(static_cast<double>(got[i]) - want[i]) > bound && reported++ < 5) {
            ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i] << " (rank "
                          << world().rank() << ")";
        }
    }
}

struct LayerCase {
    std::string name;
    RouterKind router;
    int k;
    double capacity_factor;
    Combine combine;
    bool pad_rows;
    // Router weights and inputs such that rank 0 sends no row to the last rank and the last
    // expert receives no row at all (topk only: expert choice fills every expert).
    bool force_empty;
};

// gtest prints a case by its name (the ctest listing too).
void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

MoeConfig moe_of(const LayerCase& c, int E) {
    MoeConfig m;
    m.experts = E;
    m.router = c.router;
    m.k = c.k;
    m.capacity_factor = c.capacity_factor;
    m.eval_capacity_factor = c.capacity_factor;
    m.combine = c.combine;
    m.aux_loss_coef = 0.1;
    m.z_loss_coef = 0.01;
    return m;
}

// Every rank's parameters (the same everywhere) and rank r's tokens and output gradient.
struct LayerInputs {
    std::vector<float> params;
    std::vector<std::vector<float>> x, dout;  // [rank][N_r·C]
};

LayerInputs layer_inputs(const LayerCase& c, int E, int M) {
    const int C = kChannels;
    LayerInputs in;
    Rng rng(77);
    in.params.resize(moe_layer_parameters(E, C));
    for (auto& v : in.params) v = 0.5f * rng.normal();
    if (c.force_empty) {
        // router row e is params[e·C, (e+1)·C); channel 0 of every token is 1 and channel 1 is
        // +1 on rank 0, −1 elsewhere: the last expert's logit is −40 for every token, and the
        // one before it (owned by the last rank) −40 on rank 0 and +40 on the other ranks
        in.params[static_cast<std::size_t>(E - 1) * C + 0] = -40;
        in.params[static_cast<std::size_t>(E - 2) * C + 1] = -40;
    }
    for (int r = 0; r < M; ++r) {
        Rng token_rng(1000 + r);
        std::vector<float> x(static_cast<std::size_t>(tokens_of(r)) * C), dout(x.size());
        for (auto& v : x) v = token_rng.normal();
        for (auto& v : dout) v = token_rng.normal();
        if (c.force_empty) {
            for (int n = 0; n < tokens_of(r); ++n) {
                x[static_cast<std::size_t>(n) * C + 0] = 1;
                x[static_cast<std::size_t>(n) * C + 1] = r == 0 ? 1.0f : -1.0f;
            }
        }
        in.x.push_back(std::move(x));
        in.dout.push_back(std::move(dout));
    }
    return in;
}

struct LayerResult {
    std::vector<float> out, dx, grads;
    RoutingDecision decision;
};

LayerResult run_layer(Backend& be, MoeLayer& layer, const LayerCase& c, int E,
                      const std::vector<float>& params, const std::vector<float>& x,
                      const std::vector<float>& dout) {
    const int C = kChannels, N = static_cast<int>(x.size()) / C;
    auto p = Tensor::from_host(be, {static_cast<int64_t>(params.size())}, params);
    auto g = Tensor::zeros(be, {static_cast<int64_t>(params.size())});
    auto x_dev = Tensor::from_host(be, {N, C}, x);
    auto dout_dev = Tensor::from_host(be, {N, C}, dout);
    auto out = Tensor(be, {N, C});
    auto dx = Tensor::zeros(be, {N, C});
    const MoeTensors w = moe_tensors_in(p.f32(), E, C);
    layer.forward(out.f32(), x_dev.f32(), N, w, c.capacity_factor);
    layer.backward(dx.f32(), dout_dev.f32(), x_dev.f32(), w, moe_tensors_in(g.f32(), E, C));
    return {out.to_host(), dx.to_host(), g.to_host(), layer.decision()};
}

class ExpertParallelLayer : public ::testing::TestWithParam<LayerCase> {};

TEST_P(ExpertParallelLayer, IsTheLocalLayerOnEachRanksTokens) {
    const LayerCase c = GetParam();
    CpuBackend be;
    const int M = world().size(), me = world().rank(), C = kChannels;
    const int E = 2 * M, El = E / M;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_of(c, E);
    const int max_tokens = tokens_of(M - 1);
    const LayerInputs in = layer_inputs(c, E, M);

    // the references: the local layer on every rank's tokens
    MoeLayer local(be, model, max_tokens, c.pad_rows);
    std::vector<LayerResult> reference;
    for (int r = 0; r < M; ++r) {
        reference.push_back(run_layer(be, local, c, E, in.params, in.x[r], in.dout[r]));
    }
    if (c.force_empty) {
        // the forced cases are what they claim to be
        for (const auto& a : reference[0].decision.assignments) ASSERT_LT(a.expert / El, M - 1);
        for (const auto& ref : reference) {
            for (const auto& a : ref.decision.assignments) ASSERT_NE(a.expert, E - 1);
        }
    }

    MoeLayer parallel(be, model, max_tokens, c.pad_rows,
                      std::make_unique<ExpertParallelDispatcher>(be, world(), E));
    const LayerResult got = run_layer(be, parallel, c, E, in.params, in.x[me], in.dout[me]);

    // routing is the rank's own: the same decision and statistics as the local layer's
    const auto& mine = reference[me].decision;
    ASSERT_EQ(got.decision.assignments.size(), mine.assignments.size());
    for (std::size_t i = 0; i < mine.assignments.size(); ++i) {
        EXPECT_EQ(got.decision.assignments[i].token, mine.assignments[i].token);
        EXPECT_EQ(got.decision.assignments[i].expert, mine.assignments[i].expert);
    }
    EXPECT_EQ(parallel.stats().tokens_per_expert, mine.stats.tokens_per_expert);

    expect_close(got.out, reference[me].out, 1e-5, "out");
    expect_close(got.dx, reference[me].dx, 1e-5, "dx");
    // the router's gradient comes from the rank's own tokens (through dslot_weight)
    const std::size_t router = static_cast<std::size_t>(E) * C;
    expect_close({got.grads.begin(), got.grads.begin() + router},
                 {reference[me].grads.begin(), reference[me].grads.begin() + router}, 1e-5,
                 "router gradient");
    // an expert's gradient: Σ over ranks on its owner, zero elsewhere
    const std::size_t per_expert = (in.params.size() - router) / E;
    for (int e = 0; e < E; ++e) {
        const std::size_t first = router + e * per_expert;
        const std::vector<float> got_e(got.grads.begin() + first,
                                       got.grads.begin() + first + per_expert);
        std::vector<float> want(per_expert, 0.0f);
        if (e / El == me) {
            for (int r = 0; r < M; ++r) {
                for (std::size_t i = 0; i < per_expert; ++i)
                    want[i] += reference[r].grads[first + i];
            }
            expect_close(got_e, want, 1e-4, "expert " + std::to_string(e) + " gradient");
        } else {
            EXPECT_EQ(got_e, want) << "expert " << e << " is not rank " << me << "'s";
        }
    }
    if (c.force_empty && me == M - 1) {
        // the last expert saw no row: its gradient is zero on its owner too (its bias included)
        const std::size_t first = router + static_cast<std::size_t>(E - 1) * per_expert;
        EXPECT_TRUE(std::all_of(got.grads.begin() + first, got.grads.begin() + first + per_expert,
                                [](float v) { return v == 0.0f; }));
    }
}

INSTANTIATE_TEST_SUITE_P(
    RoutersAndLayouts, ExpertParallelLayer,
    ::testing::Values(LayerCase{"topk_k1_compact", RouterKind::TopK, 1, 0.0, Combine::SoftmaxTopK,
                                false, false},
                      LayerCase{"topk_k2_compact_drops_forced", RouterKind::TopK, 2, 1.0,
                                Combine::SoftmaxTopK, false, true},
                      LayerCase{"topk_k2_compact_unlimited_forced", RouterKind::TopK, 2, 0.0,
                                Combine::Renormalized, false, true},
                      LayerCase{"topk_k1_compact_forced", RouterKind::TopK, 1, 1.25,
                                Combine::Renormalized, false, true},
                      LayerCase{"topk_k2_padded_drops_forced", RouterKind::TopK, 2, 1.0,
                                Combine::Renormalized, true, true},
                      LayerCase{"expert_choice_padded", RouterKind::ExpertChoice, 1, 1.0,
                                Combine::SoftmaxTopK, true, false},
                      LayerCase{"expert_choice_renormalized_padded", RouterKind::ExpertChoice, 1,
                                2.0, Combine::Renormalized, true, false}),
    [](const ::testing::TestParamInfo<LayerCase>& info) { return info.param.name; });

// The dispatcher alone, against the local one on the same routing decision: dispatch, the
// experts, combine, then combine_backward's dslot_weight and row gradients and
// dispatch_backward's dx (the row gradients passed straight back, as if the experts were the
// identity in the backward).
TEST(ExpertParallelDispatcher, CombineBackwardGivesTheLocalSlotWeightGradients) {
    CpuBackend be;
    const int M = world().size(), me = world().rank(), C = kChannels;
    const int E = 2 * M;
    const LayerCase c{"", RouterKind::TopK, 2, 1.0, Combine::Renormalized, false, true};
    const MoeConfig moe = moe_of(c, E);
    const LayerInputs in = layer_inputs(c, E, M);
    const int N = tokens_of(me);
    auto params = Tensor::from_host(be, {static_cast<int64_t>(in.params.size())}, in.params);
    const MoeTensors w = moe_tensors_in(params.f32(), E, C);
    auto x = Tensor::from_host(be, {N, C}, in.x[me]);
    auto dout = Tensor::from_host(be, {N, C}, in.dout[me]);
    auto logits = Tensor(be, {N, E});
    be.matmul_forward(logits.f32(), x.f32(), w.router, nullptr, N, C, E);
    const MoeRouting rule = routing_rule(moe, N, c.capacity_factor, c.pad_rows);
    RoutingBuffers buffers(be, N, E, rule.slots(), rule.rows());
    const MoeRouting r = buffers.bind(rule);
    be.moe_route(r, logits.f32());
    const int S = r.slots();

    LocalTokenDispatcher local(be);
    ExpertParallelDispatcher parallel(be, world(), E);
    auto run = [&](TokenDispatcher& d) {
        const ExpertShard shard = d.plan(r);
        const int rows = std::max(shard.groups.rows, 1);
        auto xin = Tensor(be, {rows, C}), yout = Tensor(be, {rows, C});
        auto hidden = Tensor(be, {rows, 4 * C}), hidden_gelu = Tensor(be, {rows, 4 * C});
        auto drows = Tensor::zeros(be, {rows, C});
        auto out = Tensor(be, {N, C});
        auto dslot = Tensor::zeros(be, {N, S});
        auto dx = Tensor::zeros(be, {N, C});
        d.dispatch(xin.f32(), x.f32(), r, C);
        experts_forward(be, w.experts.from_expert(shard.first_expert), shard.groups, xin.f32(),
                        {hidden.f32(), hidden_gelu.f32()}, yout.f32(), C);
        d.combine(out.f32(), yout.f32(), r, C);
        d.combine_backward(drows.f32(), dslot.f32(), dout.f32(), yout.f32(), r, C);
        d.dispatch_backward(dx.f32(), drows.f32(), r, C);
        return std::vector<std::vector<float>>{out.to_host(), dslot.to_host(), dx.to_host()};
    };
    const auto want = run(local);
    const auto got = run(parallel);
    expect_close(got[0], want[0], 1e-5, "out");
    expect_close(got[1], want[1], 1e-5, "dslot_weight");
    expect_close(got[2], want[2], 1e-5, "dx");
    // not vacuous: some slot weight has a gradient
    EXPECT_TRUE(std::any_of(want[1].begin(), want[1].end(), [](float v) { return v != 0.0f; }));
}

ModelConfig tiny_moe_gpt(int E) {
    ModelConfig m{Arch::Gpt, 256, 8, 16, 2, 2, {}};
    m.moe.experts = E;
    m.moe.router = RouterKind::TopK;
    m.moe.k = 2;
    // capacity ⌈2·16·0.75/4⌉ = 6 per expert for 2·16 assignments: drops on every rank, so
    // routing and capacity must be each rank's own micro-batch's
    m.moe.capacity_factor = 0.75;
    m.moe.eval_capacity_factor = 0.75;
    m.moe.layers = "all";
    m.moe.aux_loss_coef = 0.05;
    m.moe.z_loss_coef = 0.01;
    return m;
}

// A whole MoE GPT: M ranks with one micro-batch each and the gradient average are one process
// accumulating the same M micro-batches (the loss and, after the average, the gradient); and
// the optimizer step leaves every rank with the same parameters.
TEST(ExpertParallelGpt, IsOneProcessAccumulatingEveryRanksMicroBatch) {
    CpuBackend be;
    const int M = world().size(), me = world().rank(), B = 2;
    const ModelConfig config = tiny_moe_gpt(4);  // 4 experts: 2 per rank, or 1
    const int N = B * config.context;
    auto micro_batch = [&](int r) {
        Rng rng(500 + r);
        std::vector<int32_t> inputs(N), targets(N);
        for (auto& t : inputs) t = static_cast<int32_t>(rng.below(256));
        for (auto& t : targets) t = static_cast<int32_t>(rng.below(256));
        return std::pair{inputs, targets};
    };

    Gpt accumulating(be, config, B);
    accumulating.init_weights(5);
    std::vector<ForwardStats> local_stats;
    for (int r = 0; r < M; ++r) {
        const auto [inputs, targets] = micro_batch(r);
        local_stats.push_back(accumulating.forward(inputs, targets, B, Pass::Train));
        accumulating.backward(r == 0 ? Gradients::Overwrite : Gradients::Accumulate);
    }
    std::vector<float> want = accumulating.gradients().to_host();
    for (auto& v : want) v /= static_cast<float>(M);

    Gpt parallel(be, config, B, &world());
    parallel.init_weights(5);
    const auto [inputs, targets] = micro_batch(me);
    const ForwardStats stats = parallel.forward(inputs, targets, B, Pass::Train);
    parallel.backward();
    world().all_reduce_gradients(parallel.gradients());

    EXPECT_NEAR(stats.mean_loss(), local_stats[me].mean_loss(), 1e-5);
    EXPECT_NEAR(stats.aux_loss, local_stats[me].aux_loss, 1e-6);
    EXPECT_GT(stats.aux_loss, 0.0);
    const auto& routing = parallel.routing_stats();
    ASSERT_EQ(routing.size(), 2u);
    for (const auto& layer : routing) EXPECT_GT(layer.dropped_fraction, 0.0);
    // the job's loss, the mean over ranks, is the accumulating process's
    double losses[1] = {stats.mean_loss()};
    world().all_reduce_host(losses, 1, ReduceOp::Average);
    double want_loss = 0;
    for (const auto& s : local_stats) want_loss += s.mean_loss() / M;
    EXPECT_NEAR(losses[0], want_loss, 1e-5);

    const std::vector<float> got = parallel.gradients().to_host();
    // |difference| ≤ 1e-6 for the small entries, 1e-4 relative for the large (a run of this
    // test saw 2e-8 at most: the sums run in another order)
    int checked_experts = 0;
    for (const auto& info : parallel.layout()) {
        const std::vector<float> g(got.begin() + info.offset,
                                   got.begin() + info.offset + info.numel);
        const std::vector<float> w(want.begin() + info.offset,
                                   want.begin() + info.offset + info.numel);
        expect_close(g, w, 1e-4, info.name, /*floor=*/1e-2);
        if (info.name.find(".experts.") != std::string::npos &&
            std::any_of(w.begin(), w.end(), [](float v) { return v != 0.0f; })) {
            ++checked_experts;
        }
    }
    EXPECT_GT(checked_experts, 8);  // most experts' tensors got rows

    // one AdamW step on the averaged gradient: every rank holds the same parameters after it
    AdamW optimizer(be, parallel.num_parameters());
    TrainConfig train;
    optimizer.update(parallel.layout(), parallel.parameters(), parallel.gradients(), train, 1e-3);
    std::vector<float> mine = parallel.parameters().to_host(), root = mine;
    world().broadcast(root.data(), root.size(), 0);
    EXPECT_EQ(mine, root);
}

// train.expert_parallel reaches the task's model: each rank computes only its own experts
// (another rank's get no gradient here), where without it every rank computes every expert.
TEST(ExpertParallelGpt, TheConfigSwitchSpreadsTheTasksExperts) {
    CpuBackend be;
    const int M = world().size(), me = world().rank();
    const int E = 4, El = E / M;
    RunConfig run;
    run.data.source = DataSource::Synthetic;
    run.data.synthetic_bytes = 1 << 14;
    run.model = tiny_moe_gpt(E);
    run.model.moe.capacity_factor = 0;  // no drops: every expert gets rows
    run.train.batch_size = 2;
    for (const bool spread : {false, true}) {
        run.train.expert_parallel = spread;
        const auto task = make_training_task(be, run, "ep.yaml", world());
        task->model().init_weights(3);
        Rng data_rng(11);
        task->train_forward(0, 0, data_rng);
        task->model().backward();
        const std::vector<float> grads = task->model().gradients().to_host();
        int experts_seen = 0;
        for (const auto& info : task->model().layout()) {
            const auto at = info.name.find(".mlp.experts.");
            if (at == std::string::npos) continue;
            const int e = std::stoi(info.name.substr(at + 13));
            const bool computed =
                std::any_of(grads.begin() + info.offset, grads.begin() + info.offset + info.numel,
                            [](float v) { return v != 0.0f; });
            EXPECT_EQ(computed, !spread || e / El == me)
                << info.name << (spread ? " with" : " without") << " expert parallelism";
            ++experts_seen;
        }
        EXPECT_EQ(experts_seen, 2 * E * 4);  // two MoE blocks, four tensors per expert
    }
}

// Experts that do not split over the ranks: a UserError naming the key, from the dispatcher,
// the model and the task (which names the config too); all ranks refuse alike.
TEST(ExpertParallelSplit, RefusesExpertsThatDoNotDivideOverTheRanks) {
    CpuBackend be;
    const int M = world().size();
    try {
        ExpertParallelDispatcher dispatcher(be, world(), M + 1);
        FAIL() << M + 1 << " experts over " << M << " ranks were accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "model.moe.experts");
    }
    EXPECT_THROW({ Gpt model(be, tiny_moe_gpt(M + 1), 1, &world()); }, UserError);
    EXPECT_NO_THROW({ Gpt model(be, tiny_moe_gpt(M + 1), 1); });  // one process: all experts

    RunConfig run;
    run.data.source = DataSource::Synthetic;
    run.data.synthetic_bytes = 1 << 14;
    run.model = tiny_moe_gpt(M + 1);
    run.train.batch_size = 2;
    run.train.expert_parallel = true;
    try {
        make_training_task(be, run, "ep.yaml", world());
        FAIL() << "the task accepted " << M + 1 << " experts over " << M << " ranks";
    } catch (const UserError& e) {
        EXPECT_EQ(e.file(), "ep.yaml");
        EXPECT_EQ(e.key(), "model.moe.experts");
        EXPECT_NE(std::string(e.what()).find("train.expert_parallel"), std::string::npos)
            << e.what();
    }
    world().barrier();
}

}  // namespace
}  // namespace upcycle
