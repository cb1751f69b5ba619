// Whole-model CUDA parity: a tiny GPT, a tiny ViT and an MoE GPT (top-k, k = 2) with the
// same weights (initialised on the CPU, the flat parameter vector copied over) and the same
// batch on the CpuBackend and the CUDA backend: the training loss, the evaluation logits and
// every parameter gradient agree, and a second CUDA pass reproduces the gradients bit for bit.
// And the upcycling invariant on the GPU: an upcycled GPT (experts copies of the dense MLP,
// renormalized top-2 combine, no capacity limit) has its dense parent's step-0 loss.
//
// Like test_cuda_parity.cpp this includes no CUDA header and is compiled in every build; it
// reaches the GPU through make_backend("cuda") and reports SKIPPED without one.
//
// Tolerances:
//   loss (mean cross-entropy, and the MoE auxiliary loss): |cuda - cpu| ≤ 1e-5 · |cpu| (+1e-9)
//   logits:    |cuda - cpu| ≤ 1e-4 · max|cpu logits|
//   gradients: per parameter tensor, |cuda - cpu| ≤ 1e-4 · max|cpu tensor| + 1e-6 · max|cpu
//              gradient over all tensors| (the second term covers tensors whose gradient is
//              all rounding noise, e.g. parts that cancel mathematically)
//   upcycled vs dense (both on the GPU): mean loss within 1e-5 · |dense| and logits within
//              1e-4 · max|dense logits|. Mathematically equal; they differ by the expert GEMMs'
//              and the dense GEMM's fp32 summation orders and by the renormalized weights
//              summing to 1 only within an ulp — the size of the CPU-vs-CUDA differences above.
// Each backend routes from its own router logits (moe_route; the CUDA backend on the device),
// which differ by GEMM rounding, so both make the same routing decisions only away from ties:
// the test takes the first batch whose CPU routing has no token with two of its top k+1
// router probabilities within kMinRoutingGap (no near-ties; the router weights are scaled up
// to spread the probabilities), then checks that the CUDA model routed identically.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/model/gpt.h"
#include "core/model/vit.h"
#include "core/moe/moe_layer.h"
#include "core/rng.h"
#include "core/surgery/upcycle.h"
#include "cpu_and_cuda_fixture.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

constexpr double kLossRtol = 1e-5;
constexpr double kLossAtol = 1e-9;
constexpr double kLogitsRtol = 1e-4;
constexpr double kGradRtol = 1e-4;
constexpr double kGradGlobalAtol = 1e-6;
constexpr double kMinRoutingGap = 1e-4;
constexpr float kRouterScale = 10.0f;
constexpr uint64_t kBatchSeedsToTry = 20;

class CudaModelParity : public testing::CpuAndCuda {};

void expect_loss_close(const ForwardStats& cpu, const ForwardStats& cuda) {
    EXPECT_EQ(cpu.tokens, cuda.tokens);
    EXPECT_LE(std::fabs(cuda.mean_loss() - cpu.mean_loss()),
              kLossAtol + kLossRtol * std::fabs(cpu.mean_loss()))
        << "mean loss: cuda " << cuda.mean_loss() << ", cpu " << cpu.mean_loss();
    EXPECT_LE(std::fabs(cuda.aux_loss - cpu.aux_loss),
              kLossAtol + kLossRtol * std::fabs(cpu.aux_loss))
        << "aux loss: cuda " << cuda.aux_loss << ", cpu " << cpu.aux_loss;
}

void expect_logits_close(const std::vector<float>& cpu, const std::vector<float>& cuda) {
    ASSERT_EQ(cpu.size(), cuda.size());
    double max_ref = 0;
    for (float x : cpu) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
    const double bound = kLogitsRtol * max_ref;
    int failures = 0;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(cuda[i]) - cpu[i]);
        if (!(diff <= bound) && failures++ < 5) {
            ADD_FAILURE() << "logits[" << i << "]: cuda " << cuda[i] << ", cpu " << cpu[i];
        }
    }
    EXPECT_EQ(failures, 0) << "logits off";
}

// Every parameter tensor's gradient, magnitude-scaled per tensor (see the header).
void expect_gradients_close(const Model& model, const std::vector<float>& cpu,
                            const std::vector<float>& cuda) {
    ASSERT_EQ(cpu.size(), cuda.size());
    ASSERT_EQ(cpu.size(), model.num_parameters());
    double global_max = 0;
    for (float x : cpu) global_max = std::max(global_max, std::fabs(static_cast<double>(x)));
    ASSERT_GT(global_max, 0.0) << "no gradient at all";
    for (const auto& info : model.layout()) {
        double tensor_max = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            tensor_max = std::max(tensor_max, std::fabs(static_cast<double>(cpu[info.offset + i])));
        }
        const double bound = kGradRtol * tensor_max + kGradGlobalAtol * global_max;
        int failures = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            const float a = cpu[info.offset + i], b = cuda[info.offset + i];
            const double diff = std::fabs(static_cast<double>(b) - a);
            if (!(diff <= bound) && failures++ < 3) {
                ADD_FAILURE() << info.name << "[" << i << "]: cuda " << b << ", cpu " << a
                              << ", |diff| " << diff << " > " << bound;
            }
        }
        EXPECT_EQ(failures, 0) << info.name << ": gradient off (max|cpu| " << tensor_max << ")";
    }
}

void expect_bits_equal(const std::vector<float>& a, const std::vector<float>& b,
                       const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

// The same weights on the CUDA model as on the CPU model.
void copy_weights(Model& from_cpu, Model& to_cuda) {
    to_cuda.parameters().copy_from_host(from_cpu.parameters().to_host());
}

using testing::TextBatch;

TextBatch random_text_batch(int B, int T, int V, uint64_t seed) {
    TextBatch b = testing::random_text_batch(B, T, V, seed);
    b.targets[3] = -1;  // ignored positions
    b.targets[static_cast<std::size_t>(B * T) - 1] = -1;
    return b;
}

// Train forward + backward on both GPT models, compared; then the CUDA pass again (bits);
// then an Evaluate pass's logits.
void expect_gpt_parity(Gpt& cpu_model, Gpt& cuda_model, const TextBatch& batch, int B) {
    const ForwardStats s_cpu = cpu_model.forward(batch.inputs, batch.targets, B, Pass::Train);
    const ForwardStats s_cuda = cuda_model.forward(batch.inputs, batch.targets, B, Pass::Train);
    expect_loss_close(s_cpu, s_cuda);
    cpu_model.backward();
    cuda_model.backward();
    const auto g_cpu = cpu_model.gradients().to_host();
    const auto g_cuda = cuda_model.gradients().to_host();
    expect_gradients_close(cpu_model, g_cpu, g_cuda);

    cuda_model.forward(batch.inputs, batch.targets, B, Pass::Train);
    cuda_model.backward();
    expect_bits_equal(g_cuda, cuda_model.gradients().to_host(), "CUDA gradients, second pass");

    cpu_model.forward(batch.inputs, batch.targets, B, Pass::Evaluate);
    cuda_model.forward(batch.inputs, batch.targets, B, Pass::Evaluate);
    expect_logits_close(cpu_model.logits_host(), cuda_model.logits_host());
}

TEST_F(CudaModelParity, TinyGpt) {
    const ModelConfig config{Arch::Gpt, 256, 16, 32, 2, 2, {}};
    const int B = 4;
    Gpt cpu_model(cpu_, config, B);
    Gpt cuda_model(*cuda_, config, B);
    cpu_model.init_weights(1);
    copy_weights(cpu_model, cuda_model);
    expect_gpt_parity(cpu_model, cuda_model,
                      random_text_batch(B, config.context, config.vocab_size, 2), B);
}

// Number of tokens whose top k+1 router probabilities (CPU decision) are not pairwise at
// least kMinRoutingGap apart. With none, the CUDA model's slightly different logits pick the
// same experts in the same rank order (which decides who claims capacity first).
int routing_near_ties(const RoutingDecision& d, int E, int k) {
    const int N = static_cast<int>(d.probabilities.size()) / E;
    int near_ties = 0;
    for (int n = 0; n < N; ++n) {
        std::vector<float> p(d.probabilities.begin() + static_cast<std::ptrdiff_t>(n) * E,
                             d.probabilities.begin() + static_cast<std::ptrdiff_t>(n + 1) * E);
        std::sort(p.begin(), p.end(), std::greater<float>());
        bool tie = false;
        for (int r = 0; r < k && r + 1 < E; ++r) {
            tie = tie || p[static_cast<std::size_t>(r)] - p[static_cast<std::size_t>(r) + 1] <
                             kMinRoutingGap;
        }
        near_ties += tie;
    }
    return near_ties;
}

void expect_same_routing(const RoutingDecision& cpu, const RoutingDecision& cuda) {
    ASSERT_EQ(cpu.assignments.size(), cuda.assignments.size()) << "kept assignments";
    for (std::size_t i = 0; i < cpu.assignments.size(); ++i) {
        const auto& a = cpu.assignments[i];
        const auto& b = cuda.assignments[i];
        ASSERT_EQ(a.token, b.token) << "assignment " << i;
        ASSERT_EQ(a.expert, b.expert) << "assignment " << i;
        EXPECT_NEAR(a.weight, b.weight, 1e-5) << "assignment " << i;
    }
    EXPECT_EQ(cpu.stats.tokens_per_expert, cuda.stats.tokens_per_expert);
}

TEST_F(CudaModelParity, MoeGptTopK) {
    ModelConfig config{Arch::Gpt, 256, 16, 32, 2, 2, {}};
    config.moe.experts = 4;
    config.moe.router = RouterKind::TopK;
    config.moe.k = 2;
    config.moe.layers = "every_other";  // block 1
    config.moe.capacity_factor = 1.0;   // capacity N/2 per expert: some assignments dropped
    config.moe.eval_capacity_factor = 1.0;
    const int B = 4;
    Gpt cpu_model(cpu_, config, B);
    Gpt cuda_model(*cuda_, config, B);
    cpu_model.init_weights(1);
    // A router 10× the init scale spreads the router probabilities, so routing has no
    // near-ties that rounding differences could flip.
    auto params = cpu_model.parameters().to_host();
    for (const auto& info : cpu_model.layout()) {
        if (info.name.find(".mlp.router.weight") == std::string::npos) continue;
        for (std::size_t i = 0; i < info.numel; ++i) params[info.offset + i] *= kRouterScale;
    }
    cpu_model.parameters().copy_from_host(params);
    copy_weights(cpu_model, cuda_model);
    ASSERT_EQ(cpu_model.moe_layers(), std::vector<int>{1});

    // The first batch (by seed) whose routing on the CPU has no near-ties.
    TextBatch batch;
    bool found = false;
    for (uint64_t seed = 1; seed <= kBatchSeedsToTry && !found; ++seed) {
        batch = random_text_batch(B, config.context, config.vocab_size, seed);
        cpu_model.forward(batch.inputs, batch.targets, B, Pass::Train);
        found = routing_near_ties(cpu_model.moe_layer(1)->decision(), config.moe.experts,
                                  config.moe.k) == 0;
    }
    ASSERT_TRUE(found) << "every batch tried has router near-ties";

    cuda_model.forward(batch.inputs, batch.targets, B, Pass::Train);
    const RoutingDecision& d_cpu = cpu_model.moe_layer(1)->decision();
    expect_same_routing(d_cpu, cuda_model.moe_layer(1)->decision());
    EXPECT_GT(d_cpu.stats.dropped_fraction, 0.0) << "capacity should drop some assignments";

    expect_gpt_parity(cpu_model, cuda_model, batch, B);
}

TEST_F(CudaModelParity, TinyVit) {
    const ModelConfig config{
        .arch = Arch::Vit, .channels = 16, .layers = 2, .heads = 2, .moe = {}, .patch = 7};
    const int B = 3;
    Vit cpu_model(cpu_, config, B);
    Vit cuda_model(*cuda_, config, B);
    cpu_model.init_weights(1);
    copy_weights(cpu_model, cuda_model);
    Rng rng(4);
    const int side = config.image_size;
    std::vector<float> images(static_cast<std::size_t>(B) * side * side);
    for (auto& x : images) x = rng.normal();
    std::vector<int32_t> labels(static_cast<std::size_t>(B));
    for (auto& y : labels) {
        y = static_cast<int32_t>(rng.below(static_cast<uint64_t>(config.classes)));
    }
    labels[1] = -1;  // an ignored example

    const ForwardStats s_cpu = cpu_model.forward(images, labels, B, Pass::Train);
    const ForwardStats s_cuda = cuda_model.forward(images, labels, B, Pass::Train);
    expect_loss_close(s_cpu, s_cuda);
    cpu_model.backward();
    cuda_model.backward();
    const auto g_cpu = cpu_model.gradients().to_host();
    const auto g_cuda = cuda_model.gradients().to_host();
    expect_gradients_close(cpu_model, g_cpu, g_cuda);

    cuda_model.forward(images, labels, B, Pass::Train);
    cuda_model.backward();
    expect_bits_equal(g_cuda, cuda_model.gradients().to_host(), "CUDA gradients, second pass");

    cpu_model.forward(images, labels, B, Pass::Evaluate);
    cuda_model.forward(images, labels, B, Pass::Evaluate);
    expect_logits_close(cpu_model.logits_host(), cuda_model.logits_host());
    expect_logits_close(cpu_model.features_host(), cuda_model.features_host());
}

// The upcycling invariant on the GPU: a dense GPT and the MoE GPT that upcycle_checkpoint makes
// of it (every expert a copy of its block's MLP, renormalized top-2 combine, no capacity limit,
// a random router) give the same step-0 training loss and the same logits, both run on the CUDA
// backend — whatever the router decides, each token's output is its weights (summing to 1) times
// the same MLP output. The dense weights are the init plus noise, so that biases and LayerNorm
// parameters are not trivially zero or one.
TEST_F(CudaModelParity, UpcycledGptKeepsTheDenseLossOnTheGpu) {
    constexpr float kWeightNoise = 0.02f;
    constexpr int kExperts = 4;
    testing::TempDir dir;
    RunConfig config = testing::tiny_synthetic_config();
    config.model.layers = 4;  // MoE blocks 1 and 3
    const int B = 4;
    {
        Gpt dense_cpu(cpu_, config.model, B);
        dense_cpu.init_weights(1);
        auto params = dense_cpu.parameters().to_host();
        Rng rng(7);
        for (auto& w : params) w += kWeightNoise * rng.normal();
        dense_cpu.parameters().copy_from_host(params);
        save_checkpoint(dir / "dense.safetensors", config, dense_cpu, nullptr, TrainingState{});
    }
    const Checkpoint dense = read_checkpoint(dir / "dense.safetensors");
    UpcycleOptions options;
    options.moe.experts = kExperts;
    options.moe.router = RouterKind::TopK;
    options.moe.k = 2;
    options.moe.combine = Combine::Renormalized;
    options.moe.capacity_factor = 0;
    options.moe.eval_capacity_factor = 0;
    options.moe.layers = "every_other";
    options.seed = 3;
    const Checkpoint moe = upcycle_checkpoint(dense, options);

    Gpt dense_gpu(*cuda_, dense.config.model, B);
    load_into(dense, dense_gpu, nullptr);
    Gpt moe_gpu(*cuda_, moe.config.model, B);
    load_into(moe, moe_gpu, nullptr);
    ASSERT_EQ(moe_gpu.moe_layers(), (std::vector<int>{1, 3}));

    const TextBatch batch = random_text_batch(B, config.model.context, config.model.vocab_size, 5);
    const ForwardStats s_dense = dense_gpu.forward(batch.inputs, batch.targets, B, Pass::Train);
    const ForwardStats s_moe = moe_gpu.forward(batch.inputs, batch.targets, B, Pass::Train);
    ASSERT_EQ(s_dense.tokens, s_moe.tokens);
    EXPECT_LE(std::fabs(s_moe.mean_loss() - s_dense.mean_loss()),
              kLossAtol + kLossRtol * std::fabs(s_dense.mean_loss()))
        << "step-0 loss: upcycled " << s_moe.mean_loss() << ", dense " << s_dense.mean_loss();
    std::printf("[ upcycle invariant ] GPU step-0 loss: dense %.9f, upcycled %.9f\n",
                s_dense.mean_loss(), s_moe.mean_loss());

    dense_gpu.forward(batch.inputs, batch.targets, B, Pass::Evaluate);
    moe_gpu.forward(batch.inputs, batch.targets, B, Pass::Evaluate);
    expect_logits_close(dense_gpu.logits_host(), moe_gpu.logits_host());
}

}  // namespace
}  // namespace upcycle
