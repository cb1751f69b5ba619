// The ViT: its vision ops (patch rows, token assembly, class-token gather) against references
// and finite differences, whole-model gradients against finite differences (dense and with an
// expert-choice MoE block), function preservation of an upcycled MoE block, and that the
// attention is not causal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/model/vit.h"
#include "core/rng.h"
#include "gradient_check.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

constexpr int kPatch = 7, kImage = 28, kClasses = 10, kBatch = 3;

ModelConfig tiny_model() {
    return ModelConfig{
        .arch = Arch::Vit, .channels = 16, .layers = 2, .heads = 2, .moe = {}, .patch = kPatch};
}

ModelConfig tiny_moe_model(const std::string& router, double cf, const std::string& combine) {
    ModelConfig m = tiny_model();
    m.moe.experts = 4;
    m.moe.layers = "1";
    m.moe.router = parse_choice<RouterKind>(router, "test", "router");
    m.moe.k = 2;
    m.moe.capacity_factor = cf;
    m.moe.eval_capacity_factor = cf;
    m.moe.combine = parse_choice<Combine>(combine, "test", "combine");
    return m;
}

std::vector<float> random_vector(std::size_t n, Rng& rng, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = scale * rng.normal();
    return v;
}

struct Batch {
    std::vector<float> images;
    std::vector<int32_t> labels;
};

Batch random_batch(int B, uint64_t seed) {
    Rng rng(seed);
    Batch b;
    b.images = random_vector(static_cast<std::size_t>(B) * kImage * kImage, rng);
    for (int i = 0; i < B; ++i) b.labels.push_back(static_cast<int32_t>(rng.below(kClasses)));
    if (B > 1) b.labels[1] = -1;  // an ignored example must not disturb the gradient
    return b;
}

// ---- ops --------------------------------------------------------------------------------

TEST(VitOps, PatchEmbedInputMatchesReference) {
    CpuBackend be;
    Rng rng(1);
    for (const auto [B, H, W, p] :
         {std::array{2, 28, 28, 7}, std::array{3, 14, 21, 7}, std::array{1, 28, 28, 4}}) {
        const auto images = random_vector(static_cast<std::size_t>(B) * H * W, rng);
        const int gx = W / p, P = (H / p) * gx;
        std::vector<float> out(static_cast<std::size_t>(B) * P * p * p, -1.0f);
        be.patch_embed_input(out.data(), images.data(), B, H, W, p);
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < P; ++i)
                for (int y = 0; y < p; ++y)
                    for (int x = 0; x < p; ++x) {
                        const float want =
                            images[(static_cast<std::size_t>(b) * H + (i / gx) * p + y) * W +
                                   (i % gx) * p + x];
                        ASSERT_EQ(out[(static_cast<std::size_t>(b) * P + i) * p * p + y * p + x],
                                  want)
                            << "b " << b << " patch " << i << " (" << y << "," << x << ")";
                    }
    }
}

// For a linear op f, L = Σ w·f(inputs); checks forward against the reference and that the
// backward accumulates ∂L/∂input onto a pre-filled gradient, against central differences.
TEST(VitOps, AssembleTokensForwardAndFiniteDifferences) {
    CpuBackend be;
    Rng rng(2);
    const int B = 3, P = 5, C = 6, T = 1 + P;
    auto patch = random_vector(static_cast<std::size_t>(B) * P * C, rng);
    auto cls = random_vector(C, rng);
    auto wpe = random_vector(static_cast<std::size_t>(T) * C, rng);
    const auto w = random_vector(static_cast<std::size_t>(B) * T * C, rng);
    std::vector<float> out(w.size());
    be.assemble_tokens(out.data(), patch.data(), cls.data(), wpe.data(), B, P, C);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t)
            for (int c = 0; c < C; ++c) {
                const float src = t == 0 ? cls[c] : patch[(b * P + t - 1) * C + c];
                ASSERT_EQ(out[(b * T + t) * C + c], src + wpe[t * C + c]);
            }
    auto loss = [&] {
        be.assemble_tokens(out.data(), patch.data(), cls.data(), wpe.data(), B, P, C);
        double s = 0;
        for (std::size_t i = 0; i < out.size(); ++i) s += static_cast<double>(w[i]) * out[i];
        return s;
    };
    const float prefill = 0.25f;
    std::vector<float> dpatch(patch.size(), prefill), dcls(cls.size(), prefill),
        dwpe(wpe.size(), prefill);
    be.assemble_tokens_backward(dpatch.data(), dcls.data(), dwpe.data(), w.data(), B, P, C);
    auto check = [&](std::vector<float>& x, const std::vector<float>& grad, const char* what) {
        const float eps = 1e-2f;
        for (std::size_t i = 0; i < x.size(); ++i) {
            const float keep = x[i];
            x[i] = keep + eps;
            const double plus = loss();
            x[i] = keep - eps;
            const double minus = loss();
            x[i] = keep;
            const double fd = (plus - minus) / (2 * eps);
            const double a = grad[i] - prefill;
            EXPECT_NEAR(a, fd, 1e-3 * std::max(1.0, std::fabs(fd))) << what << "[" << i << "]";
        }
    };
    check(patch, dpatch, "dpatch_emb");
    check(cls, dcls, "dcls");
    check(wpe, dwpe, "dwpe");
    // null gradients are skipped
    be.assemble_tokens_backward(nullptr, nullptr, dwpe.data(), w.data(), B, P, C);
}

TEST(VitOps, ClassTokenGatherScatterFiniteDifferences) {
    CpuBackend be;
    Rng rng(3);
    const int B = 3, T = 4, C = 5;
    auto x = random_vector(static_cast<std::size_t>(B) * T * C, rng);
    const auto w = random_vector(static_cast<std::size_t>(B) * C, rng);
    std::vector<float> out(w.size());
    be.gather_class_tokens(out.data(), x.data(), B, T, C);
    for (int b = 0; b < B; ++b)
        for (int c = 0; c < C; ++c) ASSERT_EQ(out[b * C + c], x[b * T * C + c]);
    const float prefill = -0.5f;
    std::vector<float> dx(x.size(), prefill);
    be.scatter_class_tokens(dx.data(), w.data(), B, T, C);
    const float eps = 1e-2f;
    for (std::size_t i = 0; i < x.size(); ++i) {
        auto loss = [&] {
            be.gather_class_tokens(out.data(), x.data(), B, T, C);
            double s = 0;
            for (std::size_t j = 0; j < out.size(); ++j) s += static_cast<double>(w[j]) * out[j];
            return s;
        };
        const float keep = x[i];
        x[i] = keep + eps;
        const double plus = loss();
        x[i] = keep - eps;
        const double minus = loss();
        x[i] = keep;
        EXPECT_NEAR(dx[i] - prefill, (plus - minus) / (2 * eps), 1e-3) << "dx[" << i << "]";
    }
}

// ---- the model --------------------------------------------------------------------------

double objective(Vit& model, const Batch& batch, int B) {
    const ForwardStats s = model.forward(batch.images, batch.labels, B, Pass::Evaluate);
    return s.mean_loss() + s.aux_loss;
}

// Every parameter tensor's gradient against finite differences (tests/gradient_check.h).
void check_gradients(const ModelConfig& config) {
    CpuBackend backend;
    const int B = kBatch;
    Vit model(backend, config, B);
    model.init_weights(3);
    Rng rng(11);
    testing::make_weights_larger(model, rng);
    const Batch batch = random_batch(B, 5);

    model.forward(batch.images, batch.labels, B, Pass::Train);
    for (const auto& stats : model.routing_stats()) {  // expert choice at cf = E: all tokens
        for (const auto n : stats.tokens_per_expert) EXPECT_EQ(n, B * model.shape().tokens());
    }
    model.backward();
    testing::expect_gradients_match_finite_differences(model, rng,
                                                       [&] { return objective(model, batch, B); });
}

TEST(Vit, DenseGradientsMatchFiniteDifferences) { check_gradients(tiny_model()); }

// Expert choice with capacity factor E: every expert takes every token, so the routing is
// the same on both sides of each finite difference.
TEST(Vit, ExpertChoiceMoeGradientsMatchFiniteDifferences) {
    check_gradients(tiny_moe_model("expert_choice", 4.0, "softmax_topk"));
}

TEST(Vit, LayoutUsesTheCheckpointNamesAndShapes) {
    const auto layout = vit_parameter_layout(tiny_model());
    ASSERT_EQ(layout.size(), 4u + 2u * 12u + 4u);
    EXPECT_EQ(layout[0].name, "patch.weight");
    EXPECT_EQ(layout[0].shape, (std::vector<int64_t>{16, 49}));
    EXPECT_EQ(layout[1].name, "patch.bias");
    EXPECT_EQ(layout[2].name, "cls");
    EXPECT_EQ(layout[2].shape, (std::vector<int64_t>{16}));
    EXPECT_EQ(layout[3].name, "wpe.weight");
    EXPECT_EQ(layout[3].shape, (std::vector<int64_t>{17, 16}));
    EXPECT_EQ(layout[6].name, "blocks.0.attn.qkv.weight");
    EXPECT_EQ(layout[layout.size() - 2].name, "head.weight");
    EXPECT_EQ(layout[layout.size() - 2].shape, (std::vector<int64_t>{10, 16}));
    EXPECT_EQ(layout.back().name, "head.bias");
}

// Experts that are copies of the MLP, renormalised top-k combine weights and no capacity
// limit: the MoE block computes exactly the dense MLP, so the logits agree.
TEST(Vit, UpcycledMoeBlockPreservesTheDenseFunction) {
    CpuBackend backend;
    const int B = kBatch;
    Vit dense(backend, tiny_model(), B);
    dense.init_weights(4);
    Rng rng(6);
    testing::make_weights_larger(dense, rng);
    ModelConfig moe_config = tiny_moe_model("topk", 0.0, "renormalized");
    moe_config.moe.layers = "all";
    Vit moe(backend, moe_config, B);
    moe.init_weights(9);  // router N(0, 0.02); everything else is overwritten below
    const auto dp = dense.parameters().to_host();
    auto mp = moe.parameters().to_host();
    for (const auto& info : moe.layout()) {
        std::string source = info.name;
        const auto at = source.find(".mlp.experts.");
        if (at != std::string::npos) {
            const auto rest = source.find('.', at + 13);  // after the expert index
            source = source.substr(0, at) + ".mlp" + source.substr(rest);
        } else if (source.find(".mlp.router.") != std::string::npos) {
            auto router = random_vector(info.numel, rng);  // a decisive router
            std::copy(router.begin(), router.end(), mp.begin() + static_cast<long>(info.offset));
            continue;
        }
        const auto& src = dense.param_info(source);
        ASSERT_EQ(src.numel, info.numel) << info.name;
        std::copy(dp.begin() + static_cast<long>(src.offset),
                  dp.begin() + static_cast<long>(src.offset + src.numel),
                  mp.begin() + static_cast<long>(info.offset));
    }
    moe.parameters().copy_from_host(mp);
    const Batch batch = random_batch(B, 8);
    dense.forward(batch.images, batch.labels, B, Pass::Evaluate);
    moe.forward(batch.images, batch.labels, B, Pass::Evaluate);
    const auto a = dense.logits_host(), b = moe.logits_host();
    ASSERT_EQ(a.size(), b.size());
    float max_diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
    EXPECT_LT(max_diff, 1e-5f);
}

TEST(Vit, AttentionIsNotCausal) {
    CpuBackend backend;
    Vit model(backend, tiny_model(), 1);
    model.init_weights(1);
    Batch batch = random_batch(1, 2);
    model.forward(batch.images, batch.labels, 1, Pass::Evaluate);
    const auto cls_before = model.class_tokens_host();
    const auto logits_before = model.logits_host();
    // the bottom-right pixel belongs to the last patch (the last token)
    batch.images[kImage * kImage - 1] += 1.0f;
    model.forward(batch.images, batch.labels, 1, Pass::Evaluate);
    EXPECT_NE(model.class_tokens_host(), cls_before);
    EXPECT_NE(model.logits_host(), logits_before);
}

TEST(Vit, InitIsDeterministicWithTheDocumentedScales) {
    CpuBackend backend;
    const ModelConfig config{
        .arch = Arch::Vit, .channels = 64, .layers = 4, .heads = 4, .moe = {}, .patch = 4};
    Vit a(backend, config, 1), b(backend, config, 1);
    a.init_weights(7);
    b.init_weights(7);
    const auto pa = a.parameters().to_host();
    EXPECT_EQ(pa, b.parameters().to_host());
    auto stddev = [&](const std::string& name) {
        const auto& info = a.param_info(name);
        double sum = 0, sq = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            sum += pa[info.offset + i];
            sq += static_cast<double>(pa[info.offset + i]) * pa[info.offset + i];
        }
        const double n = static_cast<double>(info.numel);
        return std::sqrt(sq / n - (sum / n) * (sum / n));
    };
    EXPECT_NEAR(stddev("patch.weight"), 0.02, 0.002);
    EXPECT_NEAR(stddev("wpe.weight"), 0.02, 0.002);
    EXPECT_NEAR(stddev("head.weight"), 0.02, 0.004);
    EXPECT_NEAR(stddev("blocks.1.mlp.proj.weight"), 0.02 / std::sqrt(8.0), 0.0005);
    EXPECT_GT(stddev("cls"), 0.005);
    const auto& bias = a.param_info("head.bias");
    for (std::size_t i = 0; i < bias.numel; ++i) ASSERT_EQ(pa[bias.offset + i], 0.0f);
}

}  // namespace
}  // namespace upcycle
