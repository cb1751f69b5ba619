// Device-side MoE routing (kernels/cuda/moe_router.cu) against the CPU backend, whose
// moe_route / moe_route_backward are the reference (core/moe/router.cpp): the same router
// logits routed on both backends give the same decision, bit for bit, for every router,
// priority, combine, capacity and row layout over ragged token counts; exact ties are broken
// the same way; the router gradient agrees; and a whole MoE layer (route → experts → combine,
// forward and backward) agrees between the backends.
//
// Like the other tests in this directory it includes no CUDA header and is compiled in every
// build; it reaches the GPU through the Backend interface and reports SKIPPED without one.
//
// Tolerances:
//   decision (slot_expert, slot_row, row_token, expert_count, expert_offset): equal.
//   probabilities, logsumexp, slot_weight: equal. Both compute them in the same operation
//     order (float max, sequential double sum of exp, one division, rounding to float); the
//     only possible difference is CUDA's double exp/log (≤ 1 ulp) against the host's, which
//     changes the float result only when the double lands within an ulp of a float rounding
//     boundary (~2⁻²⁹ per element). Such a vanishingly rare last-ulp case would show here.
//   load_fraction: equal (integer counts over their integer total, one division).
//   statistics: the unrouted-token count equal; the double sums (entropy, Σ lse², Σ_n p[n,e])
//     within kStatisticsRtol relative: the CPU adds its ≤ 4099·32 non-negative terms in one
//     sequential pass, the GPU in a fixed tree, so they differ by rounding, ~1e-14 typically.
//   dlogits (moe_route_backward): |cuda − cpu| ≤ kGradientRowRtol · max_e |cpu[n,e]| per row.
//     Both run router_logits_gradient's double arithmetic in the same order, so they differ
//     only where the compilers contract a·b + c into an fma differently (host -march=native
//     vs nvcc): a few double ulps, almost always invisible after the rounding to float.
//   MoE layer: as test_cuda_models.cpp — outputs ≤ 1e-4 · max|cpu|; every gradient
//     ≤ 1e-4 · max|cpu tensor| + 1e-6 · max|cpu gradient|; auxiliary loss ≤ 1e-5 relative.
//     The router logits come from each backend's own GEMM, so the test picks inputs whose CPU
//     routing has no near-ties (kMinRoutingGap) in the comparisons that decide it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/moe/moe_layer.h"
#include "core/moe/router.h"
#include "core/moe/routing_buffers.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "parity_support.h"

namespace upcycle {
namespace {

using testing::Floats;
using testing::Ints;
using Doubles = std::vector<double>;

constexpr double kStatisticsRtol = 1e-12;
constexpr double kGradientRowRtol = 1e-6;
constexpr double kOutputRtol = 1e-4;
constexpr double kGradRtol = 1e-4;
constexpr double kGradGlobalAtol = 1e-6;
constexpr double kLossRtol = 1e-5;
constexpr double kWeightAtol = 1e-5;  // combine weights from slightly different router logits
constexpr double kMinRoutingGap = 1e-4;
constexpr double kAuxLossCoef = 0.1;  // larger than the defaults, so that the auxiliary
constexpr double kZLossCoef = 0.05;   // terms of the router gradient are not negligible
constexpr uint64_t kInputSeedsToTry = 20;
constexpr float kLogitScale = 2.0f;        // router logits ~ N(0, 2²): spread, some drops
constexpr float kLayerWeightScale = 0.2f;  // MoE layer weights ~ N(0, 0.2²) …
constexpr float kLayerRouterScale = 5.0f;  // … the router 5× that, to spread the probabilities

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int32_t kIntSentinel = -7;

MoeConfig moe_config(const std::string& router, int E, int k, const std::string& priority,
                     const std::string& combine, double cf) {
    MoeConfig m;
    m.experts = E;
    m.router = parse_choice<RouterKind>(router, "test", "router");
    m.k = k;
    m.priority = parse_choice<Priority>(priority, "test", "priority");
    m.combine = parse_choice<Combine>(combine, "test", "combine");
    m.capacity_factor = cf;
    m.eval_capacity_factor = cf;
    m.aux_loss_coef = kAuxLossCoef;
    m.z_loss_coef = kZLossCoef;
    return m;
}

// A routing rule to try: the config, its capacity factor and the row layout.
struct RuleCase {
    MoeConfig moe;
    double cf = 0;
    bool pad_rows = false;

    MoeRouting rule(int N) const { return routing_rule(moe, N, cf, pad_rows); }
    std::string name(int N) const {
        return to_string(moe.router) +
               (moe.router == RouterKind::TopK
                    ? " k=" + std::to_string(moe.k) + " " + to_string(moe.priority)
                    : "") +
               " " + to_string(moe.combine) + " cf=" + std::to_string(cf) +
               (pad_rows ? " padded" : " compact") + " E=" + std::to_string(moe.experts) +
               " N=" + std::to_string(N);
    }
};

// Every buffer moe_route wrote, on the host.
struct RoutingOutputs {
    Floats probabilities, logsumexp, slot_weight;
    Ints slot_expert, slot_row, row_token, expert_count, expert_offset;
    Doubles load_fraction, statistics;
};

template <class T>
std::vector<T> download(Backend& be, const T* device, std::size_t count) {
    std::vector<T> host(count);
    be.synchronize();
    if (count > 0) be.download(host.data(), device, count * sizeof(T));
    return host;
}

template <class T>
void fill(Backend& be, T* device, std::size_t count, T value) {
    const std::vector<T> host(count, value);
    if (count > 0) be.upload(device, host.data(), count * sizeof(T));
}

// Routing buffers for one rule on one backend, every element pre-filled with a sentinel (NaN,
// −7), so that an element the op forgets to write fails the comparison; then moe_route.
class Routed {
public:
    Routed(Backend& be, const MoeRouting& rule, const Floats& logits)
        : be_(be),
          buffers_(be, rule.N, rule.E, rule.slots(), rule.rows()),
          r_(buffers_.bind(rule)) {
        const int N = r_.N, E = r_.E;
        const std::size_t NE = static_cast<std::size_t>(N) * E;
        const std::size_t NS = static_cast<std::size_t>(N) * r_.slots();
        fill(be, r_.probabilities, NE, kNaN);
        fill(be, r_.logsumexp, static_cast<std::size_t>(N), kNaN);
        fill(be, r_.slot_weight, NS, kNaN);
        fill(be, r_.slot_expert, NS, kIntSentinel);
        fill(be, r_.slot_row, NS, kIntSentinel);
        fill(be, r_.row_token, static_cast<std::size_t>(r_.rows()), kIntSentinel);
        fill(be, r_.expert_count, static_cast<std::size_t>(E), kIntSentinel);
        fill(be, r_.expert_offset, static_cast<std::size_t>(E) + 1, kIntSentinel);
        fill(be, r_.load_fraction, static_cast<std::size_t>(E), static_cast<double>(kNaN));
        fill(be, r_.statistics, static_cast<std::size_t>(kRoutingSums + E),
             static_cast<double>(kNaN));
        logits_ = Tensor::from_host(be, {static_cast<int64_t>(N), static_cast<int64_t>(E)}, logits);
        be.moe_route(r_, logits_.f32());
    }

    const MoeRouting& routing() const { return r_; }

    RoutingOutputs outputs() const {
        const int N = r_.N, E = r_.E;
        const std::size_t NE = static_cast<std::size_t>(N) * E;
        const std::size_t NS = static_cast<std::size_t>(N) * r_.slots();
        RoutingOutputs o;
        o.probabilities = download(be_, r_.probabilities, NE);
        o.logsumexp = download(be_, r_.logsumexp, static_cast<std::size_t>(N));
        o.slot_weight = download(be_, r_.slot_weight, NS);
        o.slot_expert = download(be_, r_.slot_expert, NS);
        o.slot_row = download(be_, r_.slot_row, NS);
        o.row_token = download(be_, r_.row_token, static_cast<std::size_t>(r_.rows()));
        o.expert_count = download(be_, r_.expert_count, static_cast<std::size_t>(E));
        o.expert_offset = download(be_, r_.expert_offset, static_cast<std::size_t>(E) + 1);
        o.load_fraction = download(be_, r_.load_fraction, static_cast<std::size_t>(E));
        o.statistics = download(be_, r_.statistics, static_cast<std::size_t>(kRoutingSums + E));
        return o;
    }

    // dlogits [N,E] of moe_route_backward for dslot_weight [N,S] (pre-filled with NaN: the op
    // overwrites every element).
    Floats backward(const Floats& dslot_weight) const {
        const std::size_t NE = static_cast<std::size_t>(r_.N) * r_.E;
        Tensor dslot =
            Tensor::from_host(be_, {static_cast<int64_t>(dslot_weight.size())}, dslot_weight);
        Tensor dlogits = Tensor::from_host(be_, {static_cast<int64_t>(NE)}, Floats(NE, kNaN));
        be_.moe_route_backward(dlogits.f32(), dslot.f32(), r_);
        return download(be_, static_cast<const float*>(dlogits.f32()), NE);
    }

private:
    Backend& be_;
    RoutingBuffers buffers_;
    MoeRouting r_;
    Tensor logits_;
};

// Doubles equal bit for bit (NaN sentinels fail).
void expect_doubles_equal(const Doubles& cpu, const Doubles& cuda, const std::string& what) {
    ASSERT_EQ(cpu.size(), cuda.size()) << what;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
        EXPECT_EQ(std::memcmp(&cpu[i], &cuda[i], sizeof(double)), 0)
            << what << "[" << i << "]: cuda " << cuda[i] << ", cpu " << cpu[i];
    }
}

// Everything the reference defines exactly is equal; the statistics' sums are close.
void expect_same_routing(const RoutingOutputs& cpu, const RoutingOutputs& cuda) {
    testing::expect_equal(cpu.slot_expert, cuda.slot_expert, "slot_expert");
    testing::expect_equal(cpu.slot_row, cuda.slot_row, "slot_row");
    testing::expect_equal(cpu.row_token, cuda.row_token, "row_token");
    testing::expect_equal(cpu.expert_count, cuda.expert_count, "expert_count");
    testing::expect_equal(cpu.expert_offset, cuda.expert_offset, "expert_offset");
    testing::expect_close(cpu.probabilities, cuda.probabilities, testing::kExact, "probabilities");
    testing::expect_close(cpu.logsumexp, cuda.logsumexp, testing::kExact, "logsumexp");
    testing::expect_close(cpu.slot_weight, cuda.slot_weight, testing::kExact, "slot_weight");
    expect_doubles_equal(cpu.load_fraction, cuda.load_fraction, "load_fraction");
    ASSERT_EQ(cpu.statistics.size(), cuda.statistics.size());
    EXPECT_EQ(cpu.statistics[kUnroutedTokens], cuda.statistics[kUnroutedTokens])
        << "unrouted tokens";
    for (std::size_t i = 0; i < cpu.statistics.size(); ++i) {
        if (i == static_cast<std::size_t>(kUnroutedTokens)) continue;
        EXPECT_LE(std::fabs(cuda.statistics[i] - cpu.statistics[i]),
                  kStatisticsRtol * std::fabs(cpu.statistics[i]))
            << "statistics[" << i << "]: cuda " << cuda.statistics[i] << ", cpu "
            << cpu.statistics[i];
    }
}

Floats random_logits(Rng& rng, int N, int E, float scale) {
    return testing::randn(rng, testing::elems(N, E), scale);
}

// The rules of the parity sweep: topk k = 1, 2 × token_order / probability × cf 0 (no limit),
// 0.5 and 1.25 (drops) with both row layouts × both combines; expert choice cf 1, 2 and 0.
std::vector<RuleCase> sweep_rules(int E) {
    std::vector<RuleCase> rules;
    for (const std::string combine : {"softmax_topk", "renormalized"}) {
        for (const int k : {1, 2}) {
            for (const std::string priority : {"token_order", "probability"}) {
                for (const double cf : {0.0, 0.5, 1.25}) {
                    for (const bool pad : {false, true}) {
                        if (cf <= 0 && pad) continue;  // no limit: always compact
                        rules.push_back({moe_config("topk", E, k, priority, combine, cf), cf, pad});
                    }
                }
            }
        }
        for (const double cf : {1.0, 2.0, 0.0}) {
            rules.push_back(
                {moe_config("expert_choice", E, 1, "token_order", combine, cf), cf, true});
        }
    }
    return rules;
}

class CudaMoeRouting : public testing::CpuAndCuda {};

// The sweep: every rule × E ∈ {4, 8, 32} × N ∈ {1, 37, 4099}, the same random logits on both
// backends.
TEST_F(CudaMoeRouting, DecisionsMatchTheCpuExactly) {
    Rng rng(11);
    int with_drops = 0;
    for (const int E : {4, 8, 32}) {
        for (const int N : {1, 37, 4099}) {
            for (const RuleCase& c : sweep_rules(E)) {
                const MoeRouting rule = c.rule(N);
                SCOPED_TRACE(c.name(N));
                const Floats logits = random_logits(rng, N, E, kLogitScale);
                const RoutingOutputs cpu = Routed(cpu_, rule, logits).outputs();
                const RoutingOutputs cuda = Routed(*cuda_, rule, logits).outputs();
                expect_same_routing(cpu, cuda);
                int kept = 0;
                for (const int32_t row : cpu.slot_row) kept += row >= 0;
                with_drops += !rule.expert_choice && kept < N * rule.K;
                if (HasFailure()) return;  // the first failing rule says enough
            }
        }
    }
    EXPECT_GT(with_drops, 0) << "the sweep should include capacity drops";
}

// Logits quantised to three levels, every seventh token all zero, and one batch of all-zero
// logits: exact ties in the top-k order, the claim order and the experts' choices.
TEST_F(CudaMoeRouting, TiesAreBrokenLikeTheCpu) {
    const int E = 8;
    Rng rng(12);
    for (const int N : {37, 257}) {
        Floats quantised(testing::elems(N, E));
        for (auto& x : quantised) x = 0.5f * static_cast<float>(rng.below(3));
        for (int n = 0; n < N; n += 7) {
            std::fill_n(quantised.begin() + static_cast<std::ptrdiff_t>(testing::elems(n, E)), E,
                        0.0f);
        }
        const Floats zeros(testing::elems(N, E), 0.0f);
        for (const Floats* logits : std::initializer_list<const Floats*>{&quantised, &zeros}) {
            for (const RuleCase& c : sweep_rules(E)) {
                const MoeRouting rule = c.rule(N);
                SCOPED_TRACE(c.name(N) +
                             (logits == &zeros ? " all-zero logits" : " quantised logits"));
                const RoutingOutputs cpu = Routed(cpu_, rule, *logits).outputs();
                const RoutingOutputs cuda = Routed(*cuda_, rule, *logits).outputs();
                expect_same_routing(cpu, cuda);
                if (HasFailure()) return;
            }
        }
        // the case does exercise ties: many tokens have equal k-th and (k+1)-th probabilities
        const MoeRouting top2 = routing_rule(
            moe_config("topk", E, 2, "token_order", "softmax_topk", 0.0), N, 0.0, false);
        const RoutingOutputs probe = Routed(cpu_, top2, quantised).outputs();
        int tied = 0;
        for (int n = 0; n < N; ++n) {
            Floats p(
                probe.probabilities.begin() + static_cast<std::ptrdiff_t>(testing::elems(n, E)),
                probe.probabilities.begin() +
                    static_cast<std::ptrdiff_t>(testing::elems(n + 1, E)));
            std::sort(p.begin(), p.end(), std::greater<float>());
            tied += p[1] == p[2];
        }
        EXPECT_GT(tied, N / 4);
    }
}

// A negative control: the comparisons can see a different decision. A smaller capacity or the
// other priority changes the CUDA decision, and the CPU agrees with each.
TEST_F(CudaMoeRouting, DifferentRulesGiveDifferentDecisions) {
    const int N = 257, E = 8;
    Rng rng(13);
    const Floats logits = random_logits(rng, N, E, kLogitScale);
    const auto routed = [&](Backend& be, const MoeConfig& moe, double cf) {
        return Routed(be, routing_rule(moe, N, cf, true), logits).outputs();
    };
    const MoeConfig token_order = moe_config("topk", E, 2, "token_order", "softmax_topk", 0.5);
    const MoeConfig probability = moe_config("topk", E, 2, "probability", "softmax_topk", 0.5);
    const RoutingOutputs small = routed(*cuda_, token_order, 0.5);
    const RoutingOutputs large = routed(*cuda_, token_order, 1.25);
    const RoutingOutputs by_probability = routed(*cuda_, probability, 0.5);
    EXPECT_NE(small.slot_row, large.slot_row);
    EXPECT_NE(small.slot_row, by_probability.slot_row);
    EXPECT_EQ(small.slot_expert, by_probability.slot_expert);  // same top-k, other claims
    {
        SCOPED_TRACE("cf 0.5");
        expect_same_routing(routed(cpu_, token_order, 0.5), small);
    }
    {
        SCOPED_TRACE("cf 1.25");
        expect_same_routing(routed(cpu_, token_order, 1.25), large);
    }
    {
        SCOPED_TRACE("probability priority");
        expect_same_routing(routed(cpu_, probability, 0.5), by_probability);
    }
}

// Two CUDA runs on the same logits: every output bit-identical (statistics included).
TEST_F(CudaMoeRouting, IsDeterministic) {
    const int N = 4099, E = 32;
    Rng rng(14);
    const Floats logits = random_logits(rng, N, E, kLogitScale);
    for (const RuleCase& c :
         {RuleCase{moe_config("topk", E, 2, "probability", "renormalized", 0.5), 0.5, true},
          RuleCase{moe_config("expert_choice", E, 1, "token_order", "renormalized", 2.0), 2.0,
                   true}}) {
        SCOPED_TRACE(c.name(N));
        const RoutingOutputs a = Routed(*cuda_, c.rule(N), logits).outputs();
        const RoutingOutputs b = Routed(*cuda_, c.rule(N), logits).outputs();
        EXPECT_EQ(a.slot_row, b.slot_row);
        EXPECT_EQ(a.row_token, b.row_token);
        EXPECT_EQ(std::memcmp(a.slot_weight.data(), b.slot_weight.data(),
                              a.slot_weight.size() * sizeof(float)),
                  0);
        expect_doubles_equal(a.statistics, b.statistics, "statistics");
    }
}

// moe_route_backward on the same decision: random combine-weight gradients (zero on dropped
// and empty slots), both combines, aux and z coefficients non-zero.
TEST_F(CudaMoeRouting, BackwardMatchesTheCpu) {
    Rng rng(15);
    std::size_t elements = 0, identical = 0;
    double worst = 0;  // max over rows of |cuda − cpu| / max_e |cpu[n,e]|
    for (const int E : {4, 32}) {
        for (const int N : {37, 4099}) {
            for (const std::string combine : {"softmax_topk", "renormalized"}) {
                const std::vector<RuleCase> rules = {
                    {moe_config("topk", E, 2, "token_order", combine, 0.5), 0.5, true},
                    {moe_config("topk", E, 2, "probability", combine, 1.25), 1.25, true},
                    {moe_config("topk", E, 2, "token_order", combine, 0.0), 0.0, false},
                    {moe_config("topk", E, 1, "token_order", combine, 0.5), 0.5, false},
                    {moe_config("expert_choice", E, 1, "token_order", combine, 1.0), 1.0, true},
                    {moe_config("expert_choice", E, 1, "token_order", combine, 0.0), 0.0, true}};
                for (const RuleCase& c : rules) {
                    const MoeRouting rule = c.rule(N);
                    SCOPED_TRACE(c.name(N));
                    ASSERT_NE(rule.aux_loss_coef, 0.0);
                    ASSERT_NE(rule.z_loss_coef, 0.0);
                    const Floats logits = random_logits(rng, N, E, kLogitScale);
                    const Routed cpu(cpu_, rule, logits), cuda(*cuda_, rule, logits);
                    const RoutingOutputs decision = cpu.outputs();
                    ASSERT_EQ(decision.slot_row, cuda.outputs().slot_row);
                    Floats dslot = testing::randn(rng, decision.slot_row.size());
                    for (std::size_t i = 0; i < dslot.size(); ++i) {
                        if (decision.slot_row[i] < 0) dslot[i] = 0.0f;
                    }
                    const Floats want = cpu.backward(dslot), got = cuda.backward(dslot);
                    int failures = 0;
                    for (int n = 0; n < N; ++n) {
                        double row_max = 0, row_diff = 0;
                        for (int e = 0; e < E; ++e) {
                            const std::size_t i =
                                testing::elems(n, E) + static_cast<std::size_t>(e);
                            row_max = std::max(row_max, std::fabs(static_cast<double>(want[i])));
                            row_diff = std::max(row_diff,
                                                std::fabs(static_cast<double>(got[i]) - want[i]));
                            identical += std::memcmp(&want[i], &got[i], sizeof(float)) == 0;
                            ++elements;
                        }
                        if (row_max > 0) worst = std::max(worst, row_diff / row_max);
                        if (!(row_diff <= kGradientRowRtol * row_max) && failures++ < 3) {
                            ADD_FAILURE() << "dlogits row " << n << ": max |diff| " << row_diff
                                          << " > " << kGradientRowRtol << " · " << row_max;
                        }
                    }
                    EXPECT_EQ(failures, 0);
                }
            }
        }
    }
    std::printf(
        "[ moe_route_backward ] %zu of %zu dlogits bit-identical; worst row |diff|/max %.3g\n",
        identical, elements, worst);
}

// ---- the whole MoE layer ---------------------------------------------------------------------

// Tokens whose decision could flip between backends whose router logits differ by rounding:
// topk — a token whose top k+1 probabilities are not pairwise kMinRoutingGap apart (its
// experts and their rank order; with token-order priority nothing else decides the claims);
// expert choice — an expert whose capacity-th and next-best probabilities are that close.
int routing_near_ties(const RoutingDecision& d, const MoeRouting& rule) {
    const int E = rule.E, N = rule.N;
    auto p = [&](int n, int e) {
        return d.probabilities[testing::elems(n, E) + static_cast<std::size_t>(e)];
    };
    int near = 0;
    if (!rule.expert_choice) {
        for (int n = 0; n < N; ++n) {
            Floats row(static_cast<std::size_t>(E));
            for (int e = 0; e < E; ++e) row[static_cast<std::size_t>(e)] = p(n, e);
            std::sort(row.begin(), row.end(), std::greater<float>());
            for (int r = 0; r < rule.K && r + 1 < E; ++r) {
                if (row[static_cast<std::size_t>(r)] - row[static_cast<std::size_t>(r) + 1] <
                    kMinRoutingGap) {
                    ++near;
                    break;
                }
            }
        }
    } else if (rule.capacity < N) {
        for (int e = 0; e < E; ++e) {
            Floats column(static_cast<std::size_t>(N));
            for (int n = 0; n < N; ++n) column[static_cast<std::size_t>(n)] = p(n, e);
            std::sort(column.begin(), column.end(), std::greater<float>());
            const auto c = static_cast<std::size_t>(rule.capacity);
            near += column[c - 1] - column[c] < kMinRoutingGap;
        }
    }
    return near;
}

// One MoE layer on one backend with its weights in one flat buffer: the router [E,C], then
// per expert fc.weight, fc.bias, proj.weight, proj.bias (as test_moe.cpp's gradient check).
struct LayerRun {
    Floats out, dx, dparams;
    RoutingDecision decision;
    double aux_loss = 0;
};

class MoeLayerRunner {
public:
    MoeLayerRunner(const ModelConfig& model, int N) : model_(model), N_(N) {}

    std::size_t router_size() const { return static_cast<std::size_t>(E()) * C(); }
    std::size_t num_parameters() const { return moe_layer_parameters(E(), C()); }

    // A forward (and, unless forward_only, a backward) on `be`.
    LayerRun run(Backend& be, const Floats& params, const Floats& x, const Floats& dout, double cf,
                 bool forward_only = false) const {
        const int N = N_, Cc = C();
        MoeLayer layer(be, model_, N, be.pads_expert_rows());
        Tensor p = Tensor::from_host(be, {static_cast<int64_t>(params.size())}, params);
        Tensor g = Tensor::zeros(be, {static_cast<int64_t>(params.size())});
        Tensor xd = Tensor::from_host(be, {N, Cc}, x);
        Tensor out(be, {N, Cc});
        layer.forward(out.f32(), xd.f32(), N, views(p), cf);
        LayerRun run;
        run.out = out.to_host();
        run.decision = layer.decision();
        run.aux_loss = layer.auxiliary_loss();
        if (forward_only) return run;
        Tensor doutd = Tensor::from_host(be, {N, Cc}, dout);
        Tensor dx = Tensor::zeros(be, {N, Cc});
        layer.backward(dx.f32(), doutd.f32(), xd.f32(), views(p), views(g));
        run.dx = dx.to_host();
        run.dparams = g.to_host();
        return run;
    }

    // The parameter tensors' (name, offset, size), for the per-tensor gradient bounds.
    struct Part {
        std::string name;
        std::size_t offset, size;
    };
    std::vector<Part> parts() const {
        const std::size_t C4 = 4 * static_cast<std::size_t>(C()),
                          Cs = static_cast<std::size_t>(C());
        const std::size_t per_expert = (num_parameters() - router_size()) / E();
        std::vector<Part> v = {{"router", 0, router_size()}};
        for (int e = 0; e < E(); ++e) {
            const std::size_t base = router_size() + e * per_expert;
            const std::string x = "experts." + std::to_string(e) + ".";
            v.push_back({x + "fc.weight", base, C4 * Cs});
            v.push_back({x + "fc.bias", base + C4 * Cs, C4});
            v.push_back({x + "proj.weight", base + C4 * Cs + C4, Cs * C4});
            v.push_back({x + "proj.bias", base + 2 * C4 * Cs + C4, Cs});
        }
        return v;
    }

private:
    int E() const { return model_.moe.experts; }
    int C() const { return model_.channels; }
    MoeTensors views(Tensor& flat) const { return moe_tensors_in(flat.f32(), E(), C()); }

    ModelConfig model_;
    int N_;
};

void expect_values_close(const Floats& cpu, const Floats& cuda, double bound,
                         const std::string& what) {
    ASSERT_EQ(cpu.size(), cuda.size()) << what;
    int failures = 0;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(cuda[i]) - cpu[i]);
        if (!(diff <= bound) && failures++ < 3) {
            ADD_FAILURE() << what << "[" << i << "]: cuda " << cuda[i] << ", cpu " << cpu[i]
                          << ", |diff| " << diff << " > " << bound;
        }
    }
    EXPECT_EQ(failures, 0) << what;
}

double max_abs(const Floats& v, std::size_t offset = 0, std::size_t size = SIZE_MAX) {
    double m = 0;
    const std::size_t end = std::min(v.size(), size == SIZE_MAX ? v.size() : offset + size);
    for (std::size_t i = offset; i < end; ++i)
        m = std::max(m, std::fabs(static_cast<double>(v[i])));
    return m;
}

struct LayerCase {
    std::string router;
    std::string combine;
    double cf;
};
// For readable test names in ctest (instead of the parameter's bytes).
void PrintTo(const LayerCase& c, std::ostream* os) {
    *os << c.router << " " << c.combine << " cf=" << c.cf;
}

class CudaMoeLayer : public testing::CpuAndCuda, public ::testing::WithParamInterface<LayerCase> {};

// A whole MoE layer (route → gather → experts → combine, and back) with the same weights and
// input on both backends: the same routing (the CPU lays rows out compact, the GPU padded), the
// same output, the same input and parameter gradients, the same auxiliary loss. With a
// capacity that drops assignments (topk) or leaves tokens unrouted (expert choice).
TEST_P(CudaMoeLayer, MatchesTheCpu) {
    const LayerCase c = GetParam();
    const int N = 64, C = 16, E = 4;
    ModelConfig model;
    model.channels = C;
    model.moe = moe_config(c.router, E, c.router == "topk" ? 2 : 1, "token_order", c.combine, c.cf);
    const MoeLayerRunner runner(model, N);
    const MoeRouting rule = routing_rule(model.moe, N, c.cf, false);

    // weights: a router strong enough to spread the probabilities (few near-ties)
    Rng rng(21);
    Floats params = testing::randn(rng, runner.num_parameters(), kLayerWeightScale);
    for (std::size_t i = 0; i < runner.router_size(); ++i) params[i] *= kLayerRouterScale;
    Floats x, dout;
    LayerRun cpu;
    bool found = false;
    for (uint64_t seed = 1; seed <= kInputSeedsToTry && !found; ++seed) {
        Rng input_rng(seed);
        x = testing::randn(input_rng, testing::elems(N, C));
        dout = testing::randn(input_rng, testing::elems(N, C));
        cpu = runner.run(cpu_, params, x, dout, c.cf, /*forward_only=*/true);
        found = routing_near_ties(cpu.decision, rule) == 0;
    }
    ASSERT_TRUE(found) << "every input tried has router near-ties";
    cpu = runner.run(cpu_, params, x, dout, c.cf);
    const LayerRun cuda = runner.run(*cuda_, params, x, dout, c.cf);

    // routing
    ASSERT_EQ(cpu.decision.assignments.size(), cuda.decision.assignments.size());
    for (std::size_t i = 0; i < cpu.decision.assignments.size(); ++i) {
        const Assignment& a = cpu.decision.assignments[i];
        const Assignment& b = cuda.decision.assignments[i];
        ASSERT_EQ(a.token, b.token) << "assignment " << i;
        ASSERT_EQ(a.expert, b.expert) << "assignment " << i;
        EXPECT_NEAR(a.weight, b.weight, kWeightAtol) << "assignment " << i;
    }
    EXPECT_EQ(cpu.decision.selected_experts, cuda.decision.selected_experts);
    EXPECT_EQ(cpu.decision.stats.tokens_per_expert, cuda.decision.stats.tokens_per_expert);
    EXPECT_GT(cpu.decision.stats.dropped_fraction, 0.0) << "the capacity should drop something";
    EXPECT_LE(std::fabs(cuda.aux_loss - cpu.aux_loss), kLossRtol * std::fabs(cpu.aux_loss))
        << "auxiliary loss: cuda " << cuda.aux_loss << ", cpu " << cpu.aux_loss;

    // output and gradients (test_cuda_models.cpp's bounds)
    expect_values_close(cpu.out, cuda.out, kOutputRtol * max_abs(cpu.out), "out");
    const double global = std::max(max_abs(cpu.dx), max_abs(cpu.dparams));
    ASSERT_GT(global, 0.0);
    expect_values_close(cpu.dx, cuda.dx, kGradRtol * max_abs(cpu.dx) + kGradGlobalAtol * global,
                        "dx");
    for (const auto& part : runner.parts()) {
        const Floats a(cpu.dparams.begin() + static_cast<std::ptrdiff_t>(part.offset),
                       cpu.dparams.begin() + static_cast<std::ptrdiff_t>(part.offset + part.size));
        const Floats b(cuda.dparams.begin() + static_cast<std::ptrdiff_t>(part.offset),
                       cuda.dparams.begin() + static_cast<std::ptrdiff_t>(part.offset + part.size));
        expect_values_close(a, b, kGradRtol * max_abs(a) + kGradGlobalAtol * global, part.name);
    }

    // a second CUDA pass reproduces everything bit for bit
    const LayerRun again = runner.run(*cuda_, params, x, dout, c.cf);
    EXPECT_EQ(std::memcmp(again.out.data(), cuda.out.data(), cuda.out.size() * sizeof(float)), 0);
    EXPECT_EQ(
        std::memcmp(again.dparams.data(), cuda.dparams.data(), cuda.dparams.size() * sizeof(float)),
        0);
}

INSTANTIATE_TEST_SUITE_P(RoutersAndCombines, CudaMoeLayer,
                         ::testing::Values(LayerCase{"topk", "softmax_topk", 0.5},
                                           LayerCase{"topk", "renormalized", 0.5},
                                           LayerCase{"expert_choice", "softmax_topk", 1.0},
                                           LayerCase{"expert_choice", "renormalized", 1.0}),
                         [](const ::testing::TestParamInfo<LayerCase>& info) {
                             return info.param.router + "_" + info.param.combine;
                         });

}  // namespace
}  // namespace upcycle
