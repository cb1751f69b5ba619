// The MoE layer: capacity arithmetic, routing on hand-built cases, the backend layout of a
// routing decision, dispatch/combine identities, the local token dispatcher against the
// reference decision, the layer's output against dense expert MLPs, finite-difference
// gradients with the routing held fixed, and the MoE GPT.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "core/data/synthetic.h"
#include "core/data/text_batches.h"
#include "core/flops.h"
#include "core/model/gpt.h"
#include "core/moe/moe_layer.h"
#include "core/moe/routing_buffers.h"
#include "core/moe/token_dispatcher.h"
#include "core/optim/adamw.h"
#include "core/optim/schedule.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

MoeConfig moe_config(const std::string& router, int E, int k, double cf,
                     const std::string& combine) {
    MoeConfig m;
    m.experts = E;
    m.router = parse_choice<RouterKind>(router, "test", "router");
    m.k = k;
    m.capacity_factor = cf;
    m.eval_capacity_factor = cf;
    m.combine = parse_choice<Combine>(combine, "test", "combine");
    return m;
}

TEST(MoeRouting, CapacityArithmetic) {
    EXPECT_EQ(expert_capacity(moe_config("topk", 8, 2, 1.25, "softmax_topk"), 10, 1.25),
              4);  // ⌈3.125⌉
    EXPECT_EQ(expert_capacity(moe_config("topk", 8, 2, 1.0, "softmax_topk"), 16, 1.0), 4);  // exact
    EXPECT_EQ(expert_capacity(moe_config("topk", 4, 1, 0, "softmax_topk"), 10, 0), 10);  // no limit
    EXPECT_EQ(expert_capacity(moe_config("expert_choice", 4, 1, 2, "softmax_topk"), 10, 2.0), 5);
    EXPECT_EQ(expert_capacity(moe_config("expert_choice", 4, 1, 4, "softmax_topk"), 10, 4.0), 10);
}

// Four tokens all prefer expert 0 (probabilities rising with the token index); capacity 2.
TEST(MoeRouting, TopkDropsOverflowInTokenOrderOrByProbability) {
    auto m = moe_config("topk", 2, 1, 1.0, "softmax_topk");
    const std::vector<float> logits = {1.0f, 0.0f, 1.5f, 0.0f, 2.0f, 0.0f, 2.5f, 0.0f};
    const auto in_order = route(m, logits, 4, 1.0);
    ASSERT_EQ(in_order.assignments.size(), 2u);
    EXPECT_EQ(in_order.assignments[0].token, 0);
    EXPECT_EQ(in_order.assignments[1].token, 1);
    EXPECT_DOUBLE_EQ(in_order.stats.dropped_fraction, 0.5);
    EXPECT_EQ(in_order.stats.tokens_per_expert, (std::vector<int64_t>{2, 0}));

    m.priority = Priority::Probability;
    const auto by_probability = route(m, logits, 4, 1.0);
    ASSERT_EQ(by_probability.assignments.size(), 2u);
    EXPECT_EQ(by_probability.assignments[0].token, 2);  // the two most confident tokens
    EXPECT_EQ(by_probability.assignments[1].token, 3);
    EXPECT_NEAR(by_probability.assignments[1].weight, 1.0 / (1.0 + std::exp(-2.5)), 1e-6);
}

// Every first choice claims a slot before any second choice.
TEST(MoeRouting, TopkClaimsSlotsRankByRank) {
    auto m = moe_config("topk", 3, 2, 1.0, "renormalized");  // capacity ⌈2·3·1/3⌉ = 2
    // token 0: 0 > 1 > 2;  token 1: 0 > 2 > 1;  token 2: 1 > 0 > 2
    const std::vector<float> logits = {3, 2, 1, 3, 1, 2, 2, 3, 1};
    const auto d = route(m, logits, 3, 1.0);
    // rank 0: t0→0, t1→0, t2→1 (all kept); rank 1: t0→1 (kept), t1→2 (kept), t2→0 (full)
    ASSERT_EQ(d.assignments.size(), 5u);
    EXPECT_EQ(d.stats.tokens_per_expert, (std::vector<int64_t>{2, 2, 1}));
    EXPECT_EQ(d.stats.assignments_wanted, 6);
    // Σ tokens per expert = k·N − dropped
    const auto kept = std::accumulate(d.stats.tokens_per_expert.begin(),
                                      d.stats.tokens_per_expert.end(), int64_t{0});
    EXPECT_EQ(kept, 6 - 1);
    // renormalized over the token's top-2 even though one of them was dropped
    const auto& t2 = d.assignments.back();
    EXPECT_EQ(t2.token, 2);
    EXPECT_EQ(t2.expert, 1);
    EXPECT_NEAR(t2.weight, std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
}

TEST(MoeRouting, ExpertChoiceGivesEveryExpertExactlyItsCapacity) {
    const int N = 37, E = 4;
    auto m = moe_config("expert_choice", E, 1, 2.0, "softmax_topk");
    Rng rng(3);
    std::vector<float> logits(N * E);
    for (auto& x : logits) x = rng.normal();
    const auto d = route(m, logits, N, 2.0);
    const int64_t capacity = expert_capacity(m, N, 2.0);  // ⌈37·2/4⌉ = 19
    EXPECT_EQ(capacity, 19);
    for (int e = 0; e < E; ++e) EXPECT_EQ(d.stats.tokens_per_expert[e], capacity);
    // each expert's tokens are its most probable ones
    for (int e = 0; e < E; ++e) {
        float min_taken = 2, max_left = -1;
        std::vector<char> taken(N, 0);
        for (const auto& a : d.assignments)
            if (a.expert == e) taken[a.token] = 1;
        for (int n = 0; n < N; ++n) {
            const float p = d.probabilities[n * E + e];
            if (taken[n])
                min_taken = std::min(min_taken, p);
            else
                max_left = std::max(max_left, p);
        }
        EXPECT_GE(min_taken, max_left) << "expert " << e;
    }
}

struct LayoutCase {
    std::string router;
    int k;
    double capacity_factor;
    std::string priority;
    bool pad_rows;
};

class MoeRoutingLayout : public ::testing::TestWithParam<LayoutCase> {};

// The CPU backend's moe_route lays route()'s decision out in the fixed-shape form, and
// read_routing gives the same decision back; the rows obey the layout's invariants.
TEST_P(MoeRoutingLayout, MatchesTheReferenceDecisionAndKeepsTheInvariants) {
    const auto c = GetParam();
    CpuBackend be;
    const int N = 29, E = 4;
    auto m = moe_config(c.router, E, c.k, c.capacity_factor, "renormalized");
    m.priority = parse_choice<Priority>(c.priority, "test", "priority");
    Rng rng(8);
    std::vector<float> logits(N * E);
    for (auto& x : logits) x = rng.normal();
    const RoutingDecision reference = route(m, logits, N, c.capacity_factor);

    const MoeRouting rule = routing_rule(m, N, c.capacity_factor, c.pad_rows);
    RoutingBuffers buffers(be, N, E, rule.slots(), rule.rows());
    const MoeRouting r = buffers.bind(rule);
    be.moe_route(r, logits.data());
    const RoutingDecision d = read_routing(be, r);
    EXPECT_EQ(d.probabilities, reference.probabilities);
    EXPECT_EQ(d.selected_offsets, reference.selected_offsets);
    EXPECT_EQ(d.selected_experts, reference.selected_experts);
    ASSERT_EQ(d.assignments.size(), reference.assignments.size());
    for (std::size_t i = 0; i < d.assignments.size(); ++i) {
        EXPECT_EQ(d.assignments[i].token, reference.assignments[i].token);
        EXPECT_EQ(d.assignments[i].expert, reference.assignments[i].expert);
        EXPECT_EQ(d.assignments[i].weight, reference.assignments[i].weight);
    }
    EXPECT_EQ(d.stats.tokens_per_expert, reference.stats.tokens_per_expert);
    EXPECT_EQ(d.stats.aux_loss, reference.stats.aux_loss);
    EXPECT_EQ(d.stats.dropped_fraction, reference.stats.dropped_fraction);

    // padded when a capacity bounds the rows and padding was asked for (always for expert
    // choice, whose blocks are full)
    const bool padded = c.router == "expert_choice" || (c.pad_rows && c.capacity_factor > 0);
    EXPECT_EQ(r.rows_per_expert > 0, padded);
    EXPECT_EQ(r.rows(), padded ? E * r.capacity : N * c.k);
    const int S = r.slots();
    for (int e = 0; e < E; ++e) {
        const int first = r.expert_offset[e], count = r.expert_count[e];
        EXPECT_EQ(first, padded ? e * r.rows_per_expert
                                : (e ? r.expert_offset[e - 1] + r.expert_count[e - 1] : 0));
        for (int i = 0; i < count; ++i) {  // the expert's rows carry its tokens in token order
            ASSERT_GE(r.row_token[first + i], 0);
            if (i > 0) {
                EXPECT_LT(r.row_token[first + i - 1], r.row_token[first + i]);
            }
        }
        const int end = padded ? (e + 1) * r.rows_per_expert : first + count;
        for (int row = first + count; row < end; ++row) EXPECT_EQ(r.row_token[row], -1);
    }
    EXPECT_EQ(r.expert_offset[E],
              padded ? r.rows() : static_cast<int>(reference.assignments.size()));
    for (int row = r.expert_offset[E]; row < r.rows(); ++row) EXPECT_EQ(r.row_token[row], -1);
    std::vector<int> carried(static_cast<std::size_t>(r.rows()), 0);
    for (int n = 0; n < N; ++n) {
        for (int s = 0; s < S; ++s) {
            const int row = r.slot_row[n * S + s], e = r.slot_expert[n * S + s];
            if (row < 0) {
                EXPECT_EQ(r.slot_weight[n * S + s], 0.0f);
                continue;
            }
            ++carried[row];
            EXPECT_EQ(r.row_token[row], n);
            EXPECT_GE(row, r.expert_offset[e]);
            EXPECT_LT(row, r.expert_offset[e] + r.expert_count[e]);
        }
    }
    for (int row = 0; row < r.rows(); ++row) EXPECT_EQ(carried[row], r.row_token[row] >= 0 ? 1 : 0);
}

INSTANTIATE_TEST_SUITE_P(
    RoutersAndCapacities, MoeRoutingLayout,
    ::testing::Values(LayoutCase{"topk", 2, 1.0, "token_order", true},
                      LayoutCase{"topk", 2, 0.75, "probability", true},
                      LayoutCase{"topk", 2, 0.75, "probability", false},
                      LayoutCase{"topk", 2, 0.0, "token_order", true},
                      LayoutCase{"topk", 1, 0.0, "token_order", false},
                      LayoutCase{"expert_choice", 1, 2.0, "token_order", false},
                      LayoutCase{"expert_choice", 1, 0.0, "token_order", true}),
    [](const ::testing::TestParamInfo<LayoutCase>& info) {
        const auto& c = info.param;
        return c.router + "_k" + std::to_string(c.k) + "_cf" +
               std::to_string(static_cast<int>(c.capacity_factor * 100)) + "_" + c.priority +
               (c.pad_rows ? "_padded" : "_compact");
    });

// Dispatch then combine with unit weights reproduces the input exactly (top-1, no limit).
TEST(MoeDispatch, GatherThenCombineWithUnitWeightsIsTheIdentity) {
    CpuBackend be;
    const int N = 9, C = 5, E = 3;
    Rng rng(5);
    std::vector<float> logits(N * E), x(N * C);
    for (auto& v : logits) v = rng.normal();
    for (auto& v : x) v = rng.normal();
    const MoeRouting rule =
        routing_rule(moe_config("topk", E, 1, 0.0, "softmax_topk"), N, 0.0, false);
    RoutingBuffers buffers(be, N, E, rule.slots(), rule.rows());
    const MoeRouting r = buffers.bind(rule);
    be.moe_route(r, logits.data());
    std::fill(r.slot_weight, r.slot_weight + N, 1.0f);
    auto dx = Tensor::from_host(be, {N, C}, x);
    auto rows = Tensor(be, {N, C});
    auto out = Tensor(be, {N, C});
    be.gather_rows(rows.f32(), dx.f32(), r.row_token, r.rows(), C);
    be.combine_rows(out.f32(), rows.f32(), r.slot_weight, r.slot_row, N, r.slots(), C);
    EXPECT_EQ(out.to_host(), x);
}

class LocalDispatch : public ::testing::TestWithParam<LayoutCase> {};

// The local dispatcher moves rows as route()'s reference decision says: every kept (token,
// expert) pair is one row of its expert's block (padded: from e·P; compact: after the earlier
// experts' rows), in token order within the expert. dispatch copies the token there (zeros on
// padding), combine sums a token's rows with its combine weights (zeros without any), and the
// backward passes are their transposes and add to what their outputs hold.
TEST_P(LocalDispatch, MovesRowsAsTheReferenceDecisionSays) {
    const auto c = GetParam();
    CpuBackend be;
    const int N = 13, C = 5, E = 4;
    auto m = moe_config(c.router, E, c.k, c.capacity_factor, "softmax_topk");
    m.priority = parse_choice<Priority>(c.priority, "test", "priority");
    Rng rng(31);
    auto randn = [&](std::size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = rng.normal();
        return v;
    };
    const std::vector<float> logits = randn(N * E);
    const RoutingDecision reference = route(m, logits, N, c.capacity_factor);
    const MoeRouting rule = routing_rule(m, N, c.capacity_factor, c.pad_rows);
    RoutingBuffers buffers(be, N, E, rule.slots(), rule.rows());
    const MoeRouting r = buffers.bind(rule);
    be.moe_route(r, logits.data());
    const int R = r.rows(), S = r.slots();

    // each assignment's row and slot, from the reference decision alone
    const auto& assignments = reference.assignments;
    std::vector<int> kept(E, 0), next_row(E, 0), row_of, slot_of;
    for (const auto& a : assignments) ++kept[a.expert];
    for (int e = 0; e < E; ++e) {
        next_row[e] = r.rows_per_expert > 0 ? e * r.rows_per_expert
                                            : (e == 0 ? 0 : next_row[e - 1] + kept[e - 1]);
    }
    for (const auto& a : assignments) {
        row_of.push_back(next_row[a.expert]++);
        const int first = reference.selected_offsets[a.token];
        int slot = 0;
        while (reference.selected_experts[first + slot] != a.expert) ++slot;
        slot_of.push_back(slot);
    }
    ASSERT_FALSE(assignments.empty());

    LocalTokenDispatcher dispatcher(be);
    const auto x = randn(N * C), expert_out = randn(R * C);
    const auto dout = randn(N * C), drows = randn(R * C);
    auto at = [C](std::vector<float>& v, int row) {
        return v.begin() + static_cast<std::ptrdiff_t>(row) * C;
    };

    // dispatch: exact copies and zeros (the output starts as garbage: it is overwritten)
    auto x_dev = Tensor::from_host(be, {N, C}, x);
    auto rows = Tensor::from_host(be, {R, C}, std::vector<float>(R * C, 7.0f));
    dispatcher.dispatch(rows.f32(), x_dev.f32(), r, C);
    std::vector<float> expected_rows(R * C, 0.0f);
    for (std::size_t i = 0; i < assignments.size(); ++i) {
        std::copy_n(x.begin() + assignments[i].token * C, C, at(expected_rows, row_of[i]));
    }
    EXPECT_EQ(rows.to_host(), expected_rows);

    // combine (overwrites) and dispatch_backward (adds to the ones dx holds)
    std::vector<double> expected_out(N * C, 0.0), expected_dx(N * C, 1.0);
    for (std::size_t i = 0; i < assignments.size(); ++i) {
        const auto& a = assignments[i];
        for (int ch = 0; ch < C; ++ch) {
            expected_out[a.token * C + ch] +=
                static_cast<double>(a.weight) * expert_out[row_of[i] * C + ch];
            expected_dx[a.token * C + ch] += drows[row_of[i] * C + ch];
        }
    }
    auto expert_out_dev = Tensor::from_host(be, {R, C}, expert_out);
    auto out = Tensor::from_host(be, {N, C}, std::vector<float>(N * C, 7.0f));
    dispatcher.combine(out.f32(), expert_out_dev.f32(), r, C);
    auto drows_dev = Tensor::from_host(be, {R, C}, drows);
    auto dx = Tensor::from_host(be, {N, C}, std::vector<float>(N * C, 1.0f));
    dispatcher.dispatch_backward(dx.f32(), drows_dev.f32(), r, C);
    const auto out_host = out.to_host(), dx_host = dx.to_host();
    for (int i = 0; i < N * C; ++i) {
        EXPECT_NEAR(out_host[i], expected_out[i], 1e-5) << "out[" << i << "]";
        EXPECT_NEAR(dx_host[i], expected_dx[i], 1e-5) << "dx[" << i << "]";
    }

    // combine_backward: each kept row gets its weight times the token's gradient, each kept
    // slot the dot product of the token's gradient and its row; nothing else is touched
    auto dout_dev = Tensor::from_host(be, {N, C}, dout);
    auto drows_out = Tensor::zeros(be, {R, C});
    auto dslot_weight = Tensor::zeros(be, {N, S});
    dispatcher.combine_backward(drows_out.f32(), dslot_weight.f32(), dout_dev.f32(),
                                expert_out_dev.f32(), r, C);
    std::vector<float> expected_drows(R * C, 0.0f);
    std::vector<double> expected_dslot(N * S, 0.0);
    for (std::size_t i = 0; i < assignments.size(); ++i) {
        const auto& a = assignments[i];
        for (int ch = 0; ch < C; ++ch) {
            expected_drows[row_of[i] * C + ch] = a.weight * dout[a.token * C + ch];
            expected_dslot[a.token * S + slot_of[i]] +=
                static_cast<double>(dout[a.token * C + ch]) * expert_out[row_of[i] * C + ch];
        }
    }
    EXPECT_EQ(drows_out.to_host(), expected_drows);
    const auto dslot_host = dslot_weight.to_host();
    for (int i = 0; i < N * S; ++i) {
        EXPECT_NEAR(dslot_host[i], expected_dslot[i], 1e-5) << "dslot_weight[" << i << "]";
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, LocalDispatch,
                         ::testing::Values(LayoutCase{"topk", 2, 0.5, "token_order", false},
                                           LayoutCase{"topk", 2, 0.5, "probability", true},
                                           LayoutCase{"topk", 1, 0.0, "token_order", false},
                                           LayoutCase{"expert_choice", 1, 0.5, "token_order",
                                                      true}),
                         [](const ::testing::TestParamInfo<LayoutCase>& info) {
                             const auto& c = info.param;
                             return c.router + "_k" + std::to_string(c.k) + "_cf" +
                                    std::to_string(static_cast<int>(c.capacity_factor * 100)) +
                                    (c.pad_rows ? "_padded" : "_compact");
                         });

struct LayerCase {
    std::string router;
    std::string combine;
    double capacity_factor;
    bool expect_drops;
    bool pad_rows = false;  // the GPU's layout (the CPU's own is compact)
};

class MoeLayerGradient : public ::testing::TestWithParam<LayerCase> {};

// L = Σ dout ∘ MoE(x) + aux_coef·aux + z_coef·z. Finite differences of L in x, the router
// and every expert weight against the backward, with the routing held fixed: an element
// whose ±ε perturbation changes the routing decision is skipped (the loss is not
// differentiable there), and the test requires that most elements were checked.
TEST_P(MoeLayerGradient, MatchesFiniteDifferences) {
    const auto c = GetParam();
    CpuBackend be;
    const int N = 12, C = 6, E = 4;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config(c.router, E, 2, c.capacity_factor, c.combine);
    model.moe.aux_loss_coef = 0.1;
    model.moe.z_loss_coef = 0.05;
    MoeLayer layer(be, model, N, c.pad_rows);
    Rng rng(17);
    auto randn = [&](std::size_t n, float scale) {
        std::vector<float> v(n);
        for (auto& x : v) x = scale * rng.normal();
        return v;
    };
    // parameters: router then per expert fc.w, fc.b, proj.w, proj.b, in one host vector
    const std::size_t router_n = E * C;
    std::vector<float> params = randn(moe_layer_parameters(E, C), 0.5f);
    std::vector<float> x = randn(N * C, 1.0f);
    const std::vector<float> dout = randn(N * C, 1.0f);

    auto p_dev = Tensor::from_host(be, {static_cast<int64_t>(params.size())}, params);
    auto g_dev = Tensor::zeros(be, {static_cast<int64_t>(params.size())});
    auto views = [&](Tensor& flat) { return moe_tensors_in(flat.f32(), E, C); };
    auto x_dev = Tensor::from_host(be, {N, C}, x);
    auto out = Tensor(be, {N, C});
    auto loss = [&](std::vector<Assignment>* decisions) {
        layer.forward(out.f32(), x_dev.f32(), N, views(p_dev), c.capacity_factor);
        const auto y = out.to_host();
        double l = layer.auxiliary_loss();
        for (std::size_t i = 0; i < y.size(); ++i) l += static_cast<double>(dout[i]) * y[i];
        if (decisions) *decisions = layer.decision().assignments;
        return l;
    };
    std::vector<Assignment> base_routing;
    loss(&base_routing);
    EXPECT_EQ(layer.stats().dropped_fraction > 0, c.expect_drops);
    auto dout_dev = Tensor::from_host(be, {N, C}, dout);
    auto dx_dev = Tensor::zeros(be, {N, C});
    MoeTensors grads = views(g_dev);
    layer.backward(dx_dev.f32(), dout_dev.f32(), x_dev.f32(), views(p_dev), grads);
    const auto dparams = g_dev.to_host();
    const auto dx = dx_dev.to_host();

    auto same_routing = [&](const std::vector<Assignment>& a) {
        if (a.size() != base_routing.size()) return false;
        for (std::size_t i = 0; i < a.size(); ++i) {
            if (a[i].token != base_routing[i].token || a[i].expert != base_routing[i].expert)
                return false;
        }
        return true;
    };
    const double eps = 5e-3;
    int checked = 0, skipped = 0;
    auto check = [&](std::vector<float>& values, Tensor& device, std::size_t i, double analytic,
                     const std::string& what) {
        const float saved = values[i];
        std::vector<Assignment> up_routing, down_routing;
        values[i] = saved + static_cast<float>(eps);
        device.copy_from_host(values);
        const double up = loss(&up_routing);
        values[i] = saved - static_cast<float>(eps);
        device.copy_from_host(values);
        const double down = loss(&down_routing);
        values[i] = saved;
        device.copy_from_host(values);
        if (!same_routing(up_routing) || !same_routing(down_routing)) {
            ++skipped;
            return;
        }
        ++checked;
        const double numeric = (up - down) / (2 * eps);
        // relative 2%, with a floor: float rounding of the ~70-term loss is ~1e-6, i.e. ~1e-4
        // in the finite difference
        const double scale = std::max({std::fabs(analytic), std::fabs(numeric), 5e-2});
        EXPECT_LT(std::fabs(analytic - numeric) / scale, 2e-2)
            << what << "[" << i << "]: analytic " << analytic << " numeric " << numeric;
    };
    for (std::size_t i = 0; i < x.size(); i += 5) check(x, x_dev, i, dx[i], "x");
    for (std::size_t i = 0; i < router_n; ++i) check(params, p_dev, i, dparams[i], "router");
    for (std::size_t i = router_n; i < params.size(); i += 23)
        check(params, p_dev, i, dparams[i], "expert");
    EXPECT_GT(checked, 5 * skipped) << "routing flipped too often for a meaningful check";
}

// Both routers, both combines, with and without capacity drops, both row layouts.
std::vector<LayerCase> layer_cases() {
    return {LayerCase{"topk", "softmax_topk", 0.0, false},
            LayerCase{"topk", "renormalized", 0.0, false},
            LayerCase{"topk", "softmax_topk", 0.5, true},
            LayerCase{"topk", "renormalized", 0.5, true},
            LayerCase{"topk", "renormalized", 0.5, true, true},
            LayerCase{"expert_choice", "softmax_topk", 1.0, true},
            LayerCase{"expert_choice", "renormalized", 1.0, true},
            LayerCase{"expert_choice", "renormalized", 0.0, false}};
}

std::string layer_case_name(const ::testing::TestParamInfo<LayerCase>& info) {
    return info.param.router + "_" + info.param.combine +
           (info.param.expect_drops ? "_drops" : "_nodrops") +
           (info.param.pad_rows ? "_padded" : "");
}

INSTANTIATE_TEST_SUITE_P(RoutersAndCombines, MoeLayerGradient, ::testing::ValuesIn(layer_cases()),
                         layer_case_name);

// With identical experts, no capacity limit and softmax_topk combine, the MoE output is the
// dense MLP's output scaled by each token's sum of top-k router probabilities.
TEST(MoeLayerOutput, IdenticalExpertsWithSoftmaxTopkScaleTheMlpByTheTopkMass) {
    CpuBackend be;
    const int N = 10, C = 8, E = 4, H = 4 * C;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config("topk", E, 2, 0.0, "softmax_topk");
    MoeLayer layer(be, model, N, false);
    Rng rng(21);
    auto randn = [&](std::size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = 0.3f * rng.normal();
        return v;
    };
    auto router = Tensor::from_host(be, {E, C}, randn(E * C));
    auto fc_w = Tensor::from_host(be, {H, C}, randn(H * C));
    auto fc_b = Tensor::from_host(be, {H}, randn(H));
    auto pj_w = Tensor::from_host(be, {C, H}, randn(C * H));
    auto pj_b = Tensor::from_host(be, {C}, randn(C));
    MoeTensors w;
    w.router = router.f32();
    // every expert is the same MLP: stride 0
    w.experts = {fc_w.f32(), fc_b.f32(), pj_w.f32(), pj_b.f32(), 0};
    auto x = Tensor::from_host(be, {N, C}, randn(N * C));
    auto out = Tensor(be, {N, C});
    layer.forward(out.f32(), x.f32(), N, w, 0.0);
    // the dense MLP on the same input
    auto h = Tensor(be, {N, H}), g = Tensor(be, {N, H}), mlp = Tensor(be, {N, C});
    be.matmul_forward(h.f32(), x.f32(), fc_w.f32(), fc_b.f32(), N, C, H);
    be.gelu_forward(g.f32(), h.f32(), static_cast<std::size_t>(N) * H);
    be.matmul_forward(mlp.f32(), g.f32(), pj_w.f32(), pj_b.f32(), N, H, C);
    const auto y = out.to_host(), reference = mlp.to_host();
    const auto& d = layer.decision();
    for (int n = 0; n < N; ++n) {
        double mass = 0;
        for (int j = d.selected_offsets[n]; j < d.selected_offsets[n + 1]; ++j) {
            mass += d.probabilities[n * E + d.selected_experts[j]];
        }
        EXPECT_LT(mass, 1.0);  // two of four experts: strictly less than all the mass
        for (int c = 0; c < C; ++c) {
            EXPECT_NEAR(y[n * C + c], reference[n * C + c] * mass, 1e-6) << "token " << n;
        }
    }
}

// The layer's output from route()'s reference decision and a dense MLP per expert: every token
// gets Σ over its kept experts of combine weight · that expert's MLP of the token (capacity
// drops included; a token no expert kept gets zeros).
class MoeLayerOutputCase : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeLayerOutputCase, IsTheReferenceDecisionsWeightedSumOfExpertMlps) {
    const auto c = GetParam();
    CpuBackend be;
    const int N = 12, C = 6, E = 4, H = 4 * C;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config(c.router, E, 2, c.capacity_factor, c.combine);
    MoeLayer layer(be, model, N, c.pad_rows);
    Rng rng(23);
    std::vector<float> params(moe_layer_parameters(E, C)), x(N * C);
    for (auto& v : params) v = 0.5f * rng.normal();
    for (auto& v : x) v = rng.normal();
    auto p_dev = Tensor::from_host(be, {static_cast<int64_t>(params.size())}, params);
    const MoeTensors w = moe_tensors_in(p_dev.f32(), E, C);
    auto x_dev = Tensor::from_host(be, {N, C}, x);
    auto out = Tensor(be, {N, C});
    layer.forward(out.f32(), x_dev.f32(), N, w, c.capacity_factor);
    EXPECT_EQ(layer.stats().dropped_fraction > 0, c.expect_drops);

    auto logits = Tensor(be, {N, E});
    be.matmul_forward(logits.f32(), x_dev.f32(), w.router, nullptr, N, C, E);
    const RoutingDecision reference = route(model.moe, logits.to_host(), N, c.capacity_factor);
    // every expert's MLP on every token
    std::vector<std::vector<float>> mlp(E);
    auto h = Tensor(be, {N, H}), g = Tensor(be, {N, H}), y = Tensor(be, {N, C});
    for (int e = 0; e < E; ++e) {
        const std::size_t offset = e * w.experts.stride;
        be.matmul_forward(h.f32(), x_dev.f32(), w.experts.fc_weight + offset,
                          w.experts.fc_bias + offset, N, C, H);
        be.gelu_forward(g.f32(), h.f32(), static_cast<std::size_t>(N) * H);
        be.matmul_forward(y.f32(), g.f32(), w.experts.proj_weight + offset,
                          w.experts.proj_bias + offset, N, H, C);
        mlp[e] = y.to_host();
    }
    std::vector<double> expected(N * C, 0.0);
    for (const auto& a : reference.assignments) {
        for (int ch = 0; ch < C; ++ch) {
            expected[a.token * C + ch] +=
                static_cast<double>(a.weight) * mlp[a.expert][a.token * C + ch];
        }
    }
    const auto got = out.to_host();
    for (int i = 0; i < N * C; ++i) {
        EXPECT_NEAR(got[i], expected[i], 1e-5 * std::max(1.0, std::fabs(expected[i])))
            << "out[" << i << "]";
    }
}

INSTANTIATE_TEST_SUITE_P(RoutersAndCombines, MoeLayerOutputCase, ::testing::ValuesIn(layer_cases()),
                         layer_case_name);

// Forwards to a local dispatcher and counts the calls.
class CountingDispatcher final : public TokenDispatcher {
public:
    explicit CountingDispatcher(Backend& backend) : local_(backend) {}
    void dispatch(float* rows, const float* x, const MoeRouting& r, int C) override {
        ++dispatches;
        local_.dispatch(rows, x, r, C);
    }
    void dispatch_backward(float* dx, const float* drows, const MoeRouting& r, int C) override {
        ++dispatch_backwards;
        local_.dispatch_backward(dx, drows, r, C);
    }
    void combine(float* out, const float* rows, const MoeRouting& r, int C) override {
        ++combines;
        local_.combine(out, rows, r, C);
    }
    void combine_backward(float* drows, float* dslot_weight, const float* dout, const float* rows,
                          const MoeRouting& r, int C) override {
        ++combine_backwards;
        local_.combine_backward(drows, dslot_weight, dout, rows, r, C);
    }
    int dispatches = 0, dispatch_backwards = 0, combines = 0, combine_backwards = 0;

private:
    LocalTokenDispatcher local_;
};

// A layer given a dispatcher moves its tokens through it, once each way per pass, and computes
// what the default (local) layer does, bit for bit.
TEST(MoeLayerDispatcher, MovesTokensThroughTheDispatcherItIsGiven) {
    CpuBackend be;
    const int N = 12, C = 6, E = 4;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config("topk", E, 2, 0.5, "softmax_topk");
    auto counting = std::make_unique<CountingDispatcher>(be);
    const CountingDispatcher& calls = *counting;
    MoeLayer given(be, model, N, false, std::move(counting));
    MoeLayer local(be, model, N, false);
    Rng rng(29);
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
        layer.forward(out.f32(), x_dev.f32(), N, w, 0.5);
        layer.backward(dx.f32(), dout_dev.f32(), x_dev.f32(), w, moe_tensors_in(grads.f32(), E, C));
        return std::vector<std::vector<float>>{out.to_host(), dx.to_host(), grads.to_host()};
    };
    const auto through_given = run(given);
    EXPECT_EQ(calls.dispatches, 1);
    EXPECT_EQ(calls.combines, 1);
    EXPECT_EQ(calls.combine_backwards, 1);
    EXPECT_EQ(calls.dispatch_backwards, 1);
    EXPECT_EQ(through_given, run(local));
}

ModelConfig tiny_moe_gpt(const std::string& combine, double cf) {
    ModelConfig m{Arch::Gpt, 256, 8, 16, 2, 2, {}};
    m.moe = moe_config("topk", 4, 2, cf, combine);
    m.moe.layers = "every_other";
    return m;
}

// A dense GPT and an MoE GPT whose experts are copies of the dense MLPs (renormalized
// combine, no capacity limit) compute the same logits: the upcycling invariant.
TEST(MoeGpt, CopiedExpertsWithRenormalizedCombinePreserveTheDenseFunction) {
    CpuBackend be;
    const ModelConfig dense_config{Arch::Gpt, 256, 16, 32, 2, 4, {}};
    ModelConfig moe_config_ = dense_config;
    moe_config_.moe = moe_config("topk", 4, 2, 0.0, "renormalized");
    Gpt dense(be, dense_config, 2), moe(be, moe_config_, 2);
    dense.init_weights(1);
    moe.init_weights(2);  // router random; everything else overwritten below
    const auto dense_params = dense.parameters().to_host();
    auto moe_params = moe.parameters().to_host();
    for (const auto& info : moe.layout()) {
        std::string source = info.name;
        const auto experts = source.find(".mlp.experts.");
        if (source.find(".mlp.router.") != std::string::npos) continue;
        if (experts != std::string::npos) {
            const auto tail = source.substr(source.find('.', experts + 13) + 1);  // fc.weight …
            source = source.substr(0, experts) + ".mlp." + tail;
        }
        const auto& from = dense.param_info(source);
        ASSERT_EQ(from.numel, info.numel) << info.name;
        std::copy_n(dense_params.begin() + static_cast<std::ptrdiff_t>(from.offset), info.numel,
                    moe_params.begin() + static_cast<std::ptrdiff_t>(info.offset));
    }
    moe.parameters().copy_from_host(moe_params);
    Rng rng(4);
    std::vector<int32_t> tokens(32), targets(32);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(256));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(256));
    dense.forward(tokens, targets, 2, Pass::Evaluate);
    moe.forward(tokens, targets, 2, Pass::Evaluate);
    const auto a = dense.logits_host(), b = moe.logits_host();
    double max_diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(a[i] - b[i])));
    EXPECT_LT(max_diff, 1e-5);
}

// The CPU backend, counting the downloads to the host (on a GPU each one waits for the device).
class DownloadCountingBackend final : public CpuBackend {
public:
    void download(void* host_dst, const void* src, std::size_t bytes) override {
        ++downloads;
        CpuBackend::download(host_dst, src, bytes);
    }
    int downloads = 0;
};

// Training reads the aux loss only on the steps it logs: with it off, a forward downloads
// nothing of the MoE layers' routing statistics (today 3 reads per MoE layer: counts, sums,
// load), and with it on, the same aux loss as before; the gradients are the same either way.
TEST(MoeGpt, AForwardThatDoesNotReportTheAuxLossReadsNoRoutingStatistics) {
    DownloadCountingBackend be;
    ModelConfig config = tiny_moe_gpt("softmax_topk", 1.25);
    config.moe.layers = "all";
    Gpt model(be, config, 2);
    model.init_weights(3);
    ASSERT_EQ(model.moe_layers().size(), 2u);
    Rng rng(5);
    std::vector<int32_t> tokens(16), targets(16);  // B = 2 of T = 8
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(256));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(256));

    const int before_reported = be.downloads;
    const ForwardStats reported = model.forward(tokens, targets, 2, Pass::Train);
    const int reported_downloads = be.downloads - before_reported;
    model.backward();
    const auto reported_gradients = model.gradients().to_host();

    model.report_auxiliary_loss(false);
    const int before_silent = be.downloads;
    const ForwardStats silent = model.forward(tokens, targets, 2, Pass::Train);
    const int silent_downloads = be.downloads - before_silent;
    model.backward();

    EXPECT_GT(reported.aux_loss, 0.0);
    EXPECT_EQ(silent.aux_loss, 0.0);
    EXPECT_EQ(silent.loss_sum, reported.loss_sum);
    EXPECT_EQ(reported_downloads - silent_downloads, 3 * 2);
    EXPECT_EQ(model.gradients().to_host(), reported_gradients);
    // the statistics are still there for whoever asks (the routing rows of a logged step)
    EXPECT_EQ(model.routing_stats().size(), 2u);
}

// Whole MoE GPT: the directional finite-difference check of test_gpt, over every tensor.
TEST(MoeGpt, GradientsMatchFiniteDifferences) {
    CpuBackend be;
    const ModelConfig config = tiny_moe_gpt("renormalized", 0.0);
    Gpt model(be, config, 2);
    model.init_weights(3);
    Rng rng(9);
    auto theta = model.parameters().to_host();
    for (auto& x : theta) x += 0.1f * rng.normal();
    model.parameters().copy_from_host(theta);
    std::vector<int32_t> tokens(16), targets(16);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.below(256));
    for (auto& t : targets) t = static_cast<int32_t>(rng.below(256));
    auto objective = [&] {
        const auto s = model.forward(tokens, targets, 2, Pass::Train);
        return s.mean_loss() + s.aux_loss;
    };
    objective();
    model.backward();
    const auto grads = model.gradients().to_host();
    const double eps = 1e-3;
    int checked = 0;
    for (const auto& info : model.layout()) {
        // unit direction along the gradient plus a random component
        std::vector<double> d(info.numel);
        double gn = 0, norm = 0;
        for (std::size_t i = 0; i < info.numel; ++i)
            gn += static_cast<double>(grads[info.offset + i]) * grads[info.offset + i];
        gn = std::sqrt(gn) + 1e-30;
        for (std::size_t i = 0; i < info.numel; ++i) {
            d[i] = grads[info.offset + i] / gn +
                   rng.normal() / std::sqrt(static_cast<double>(info.numel));
            norm += d[i] * d[i];
        }
        double analytic = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            d[i] /= std::sqrt(norm);
            analytic += grads[info.offset + i] * d[i];
        }
        auto shifted = theta;
        for (std::size_t i = 0; i < info.numel; ++i)
            shifted[info.offset + i] = static_cast<float>(theta[info.offset + i] + eps * d[i]);
        model.parameters().copy_from_host(shifted);
        const double up = objective();
        for (std::size_t i = 0; i < info.numel; ++i)
            shifted[info.offset + i] = static_cast<float>(theta[info.offset + i] - eps * d[i]);
        model.parameters().copy_from_host(shifted);
        const double down = objective();
        model.parameters().copy_from_host(theta);
        const double numeric = (up - down) / (2 * eps);
        if (std::fabs(analytic) < 1e-4) continue;  // an expert no token reached
        ++checked;
        EXPECT_LT(std::fabs(analytic - numeric) / std::max(std::fabs(analytic), std::fabs(numeric)),
                  3e-2)
            << info.name << ": analytic " << analytic << " numeric " << numeric;
    }
    EXPECT_GT(checked, 20);
}

// An MoE GPT learns the Markov text and its routing statistics add up at every step.
TEST(MoeGpt, TrainsAndItsRoutingStatisticsAddUp) {
    CpuBackend be;
    ModelConfig config{Arch::Gpt, 256, 32, 64, 2, 4, {}};
    config.moe = moe_config("topk", 4, 2, 1.25, "softmax_topk");
    const int B = 16;
    Gpt model(be, config, B);
    model.init_weights(1);
    AdamW optimizer(be, model.num_parameters());
    TrainConfig train;
    train.lr = 3e-3;
    train.warmup_steps = 20;
    train.schedule = Schedule::Constant;
    const auto text = make_synthetic_text(1 << 17, 3);
    Rng rng(1);
    std::vector<int32_t> inputs, targets;
    double first_loss = 0, last_loss = 0;
    const int64_t N = static_cast<int64_t>(B) * config.context;
    for (int64_t step = 1; step <= 300; ++step) {
        sample_text_batch(text.text, B, config.context, rng, inputs, targets);
        const auto s = model.forward(inputs, targets, B, Pass::Train);
        (step == 1 ? first_loss : last_loss) = s.mean_loss();
        model.backward();
        optimizer.update(model.layout(), model.parameters(), model.gradients(), train,
                         learning_rate(train, step));
        for (const auto& r : model.routing_stats()) {
            const auto kept =
                std::accumulate(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), int64_t{0});
            ASSERT_EQ(kept, r.assignments_kept);
            ASSERT_EQ(r.assignments_wanted, 2 * N);
            ASSERT_NEAR(r.dropped_fraction, 1.0 - static_cast<double>(kept) / (2 * N), 1e-12);
            for (const auto t : r.tokens_per_expert)
                ASSERT_LE(t, expert_capacity(config.moe, N, 1.25));
            ASSERT_GE(r.router_entropy, 0.0);
            ASSERT_LE(r.router_entropy, std::log(4.0) + 1e-9);
            ASSERT_GE(r.aux_loss, 0.0);
        }
    }
    EXPECT_GT(first_loss, 5.0);
    EXPECT_LT(last_loss, text.entropy_rate_nats + 0.4);
}

TEST(MoeFlops, CountsActiveExpertsAndTheRouter) {
    ModelConfig dense{Arch::Gpt, 256, 128, 128, 4, 4, {}};
    ModelConfig moe = dense;
    moe.moe = moe_config("topk", 8, 2, 1.25, "softmax_topk");  // blocks 1 and 3
    const double C = 128;
    // each MoE block adds one more MLP (k=2 vs 1) and the router: 2·(8C² + 8C) per token
    EXPECT_DOUBLE_EQ(flops_per_token(moe).forward - flops_per_token(dense).forward,
                     2 * 2.0 * (8 * C * C + 8 * C));
    // parameters: 2 MoE blocks each with 8 expert MLPs instead of 1, plus an [8,C] router
    const double mlp = 8 * C * C + 5 * C;
    EXPECT_EQ(parameter_count(moe) - parameter_count(dense),
              static_cast<int64_t>(2 * (7 * mlp + 8 * C)));
}

}  // namespace
}  // namespace upcycle
