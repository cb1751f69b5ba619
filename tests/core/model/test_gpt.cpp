// The GPT as a whole: gradients against finite differences, causality, init statistics, and
// that it learns.
#include <gtest/gtest.h>

#include <cmath>

#include "core/data/synthetic.h"
#include "core/data/text_batches.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"
#include "core/optim/schedule.h"
#include "core/rng.h"
#include "gradient_check.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

ModelConfig tiny_model() { return ModelConfig{Arch::Gpt, 256, 8, 16, 2, 2, {}}; }

using Batch = testing::TextBatch;

Batch random_batch(int B, int T, int V, uint64_t seed) {
    Batch b = testing::random_text_batch(B, T, V, seed);
    b.targets[3] = -1;  // an ignored position must not disturb the gradient
    return b;
}

double mean_loss(Gpt& model, const Batch& batch, int B) {
    return model.forward(batch.inputs, batch.targets, B, Pass::Evaluate).mean_loss();
}

// Every parameter tensor's gradient against finite differences (tests/gradient_check.h).
TEST(Gpt, GradientsMatchFiniteDifferences) {
    CpuBackend backend;
    const ModelConfig config = tiny_model();
    const int B = 2;
    Gpt model(backend, config, B);
    model.init_weights(3);
    Rng rng(11);
    testing::make_weights_larger(model, rng);
    const Batch batch = random_batch(B, config.context, config.vocab_size, 5);

    model.forward(batch.inputs, batch.targets, B, Pass::Train);
    model.backward();
    testing::expect_gradients_match_finite_differences(model, rng,
                                                       [&] { return mean_loss(model, batch, B); });
}

TEST(Gpt, FutureTokensDoNotChangeEarlierLogits) {
    CpuBackend backend;
    const ModelConfig config = tiny_model();
    Gpt model(backend, config, 1);
    model.init_weights(1);
    Batch batch = random_batch(1, config.context, config.vocab_size, 2);
    model.forward(batch.inputs, batch.targets, 1, Pass::Evaluate);
    const auto before = model.logits_host();
    const int changed = 5;
    batch.inputs[changed] = (batch.inputs[changed] + 1) % config.vocab_size;
    model.forward(batch.inputs, batch.targets, 1, Pass::Evaluate);
    const auto after = model.logits_host();
    const int V = config.vocab_size;
    for (int t = 0; t < config.context; ++t) {
        bool same = true;
        for (int v = 0; v < V; ++v) same = same && before[t * V + v] == after[t * V + v];
        if (t < changed)
            EXPECT_TRUE(same) << "position " << t << " saw a future token";
        else
            EXPECT_FALSE(same) << "position " << t << " ignored its own past";
    }
}

TEST(Gpt, InitIsDeterministicWithTheDocumentedScales) {
    CpuBackend backend;
    const ModelConfig config{Arch::Gpt, 256, 32, 64, 4, 4, {}};
    Gpt a(backend, config, 1), b(backend, config, 1), c(backend, config, 1);
    a.init_weights(7);
    b.init_weights(7);
    c.init_weights(8);
    const auto pa = a.parameters().to_host(), pb = b.parameters().to_host(),
               pc = c.parameters().to_host();
    EXPECT_EQ(pa, pb);
    EXPECT_NE(pa, pc);
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
    EXPECT_NEAR(stddev("wte.weight"), 0.02, 0.002);
    EXPECT_NEAR(stddev("blocks.0.mlp.fc.weight"), 0.02, 0.002);
    EXPECT_NEAR(stddev("blocks.1.mlp.proj.weight"), 0.02 / std::sqrt(8.0), 0.0005);
    EXPECT_NEAR(stddev("blocks.2.attn.proj.weight"), 0.02 / std::sqrt(8.0), 0.0008);
    const auto& ln = a.param_info("blocks.0.ln1.weight");
    for (std::size_t i = 0; i < ln.numel; ++i) ASSERT_EQ(pa[ln.offset + i], 1.0f);
    const auto& bias = a.param_info("blocks.3.mlp.fc.bias");
    for (std::size_t i = 0; i < bias.numel; ++i) ASSERT_EQ(pa[bias.offset + i], 0.0f);
}

TEST(Gpt, LayoutUsesTheCheckpointNamesAndShapes) {
    const auto layout = gpt_parameter_layout(ModelConfig{Arch::Gpt, 256, 64, 48, 3, 4, {}});
    ASSERT_EQ(layout.size(), 2u + 3u * 12u + 2u);
    EXPECT_EQ(layout[0].name, "wte.weight");
    EXPECT_EQ(layout[0].shape, (std::vector<int64_t>{256, 48}));
    EXPECT_EQ(layout[1].name, "wpe.weight");
    EXPECT_EQ(layout[1].shape, (std::vector<int64_t>{64, 48}));
    EXPECT_EQ(layout[4].name, "blocks.0.attn.qkv.weight");
    EXPECT_EQ(layout[4].shape, (std::vector<int64_t>{144, 48}));
    EXPECT_EQ(layout[12].name, "blocks.0.mlp.proj.weight");
    EXPECT_EQ(layout[12].shape, (std::vector<int64_t>{48, 192}));
    EXPECT_EQ(layout.back().name, "lnf.bias");
}

// A tiny model learns a Markov text whose entropy rate is ~0.94 nats/byte: from ln(256) = 5.5
// at init to within 0.3 nats of the entropy rate on held-out windows.
TEST(Gpt, LearnsSyntheticMarkovText) {
    CpuBackend backend;
    const ModelConfig config{Arch::Gpt, 256, 32, 64, 2, 4, {}};
    const int B = 16;
    Gpt model(backend, config, B);
    model.init_weights(1);
    AdamW optimizer(backend, model.num_parameters());
    TrainConfig train;
    train.lr = 3e-3;
    train.warmup_steps = 20;
    train.schedule = Schedule::Constant;
    const auto text = make_synthetic_text(1 << 17, 3);
    const std::string_view train_text(text.text.data(), text.text.size() - 8192);
    const std::string_view held_out(text.text.data() + text.text.size() - 8192, 8192);
    Rng rng(1);
    std::vector<int32_t> inputs, targets;
    for (int64_t step = 1; step <= 300; ++step) {
        sample_text_batch(train_text, B, config.context, rng, inputs, targets);
        model.forward(inputs, targets, B, Pass::Train);
        model.backward();
        optimizer.update(model.layout(), model.parameters(), model.gradients(), train,
                         learning_rate(train, step));
    }
    std::vector<int64_t> windows;
    for (int64_t w = 0; w < B; ++w) windows.push_back(w * 15);
    fill_eval_windows(held_out, config.context, windows, inputs, targets);
    const double loss = model.forward(inputs, targets, B, Pass::Evaluate).mean_loss();
    EXPECT_LT(loss, text.entropy_rate_nats + 0.3) << "entropy rate " << text.entropy_rate_nats;
}

}  // namespace
}  // namespace upcycle
