// Surgery on a ViT checkpoint, through the real functions (save_checkpoint → read_checkpoint →
// upcycle / warmstart / scratch → load_into a Vit of the result's config → forward):
//   - an upcycled ViT computes its dense parent's logits at step 0, with top-k routing
//     (renormalized, no capacity limit) and with expert choice at capacity factor E (every
//     expert takes every token, so each token's combine weights over all E experts sum to 1,
//     with either combine mode);
//   - a negative control: expert choice at capacity factor 1 drops tokens and does not;
//   - warm start and scratch make checkpoints that load and run.
// Random images: no Fashion-MNIST files are needed (nothing here calls train()).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/model/vit.h"
#include "core/rng.h"
#include "core/surgery/scratch.h"
#include "core/surgery/upcycle.h"
#include "core/surgery/warmstart.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

constexpr int kImage = 28, kClasses = 10, kBatch = 4;
constexpr int kExperts = 4;

RunConfig dense_vit_config() {
    RunConfig c;
    c.name = "vit-dense";
    c.model = ModelConfig{
        .arch = Arch::Vit, .channels = 32, .layers = 2, .heads = 2, .moe = {}, .patch = 7};
    c.data.source = DataSource::FashionMnist;
    c.data.validation_images = 100;
    c.train.batch_size = kBatch;
    c.train.steps = 10;
    validate(c, "test");
    return c;
}

std::string sci(double x) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.2e", x);
    return buffer;
}

struct Images {
    std::vector<float> pixels;
    std::vector<int32_t> labels;
};

Images random_images(int B, uint64_t seed) {
    Rng rng(seed);
    Images im;
    im.pixels.resize(static_cast<std::size_t>(B) * kImage * kImage);
    for (auto& x : im.pixels) x = rng.normal();
    for (int i = 0; i < B; ++i) im.labels.push_back(static_cast<int32_t>(rng.below(kClasses)));
    return im;
}

// A dense ViT with weights well away from init (so that the MLPs matter: a near-zero MLP
// would make "the MoE equals the MLP" trivially true), saved and read back as a checkpoint.
class VitSurgery : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir;
        const RunConfig config = dense_vit_config();
        Vit model(backend_, config.model, kBatch);
        model.init_weights(5);
        Rng rng(17);
        auto params = model.parameters().to_host();
        for (auto& x : params) x = 3.0f * x + 0.1f * rng.normal();
        model.parameters().copy_from_host(params);
        TrainingState state;
        state.step = 10;
        state.tokens = 10 * kBatch * tokens_per_example(config.model);
        const auto path = dir_->path() / "dense.safetensors";
        save_checkpoint(path, config, model, nullptr, state);
        dense_ = new Checkpoint(read_checkpoint(path));
        images_ = new Images(random_images(kBatch, 23));
        dense_logits_ = new std::vector<float>(logits_of(*dense_));
    }
    static void TearDownTestSuite() {
        delete dense_logits_;
        delete images_;
        delete dense_;
        delete dir_;
    }

    // Writes the checkpoint, reads it back (read_checkpoint validates names and shapes against
    // its config), loads it into a Vit built from its config, and returns the logits of the
    // shared random images (Pass::Evaluate: the eval capacity factor applies).
    static std::vector<float> logits_of(const Checkpoint& c, const std::string& name = "") {
        Checkpoint loaded = c;
        if (!name.empty()) {
            const auto path = dir_->path() / (name + ".safetensors");
            write_checkpoint(path, c, backend_);
            loaded = read_checkpoint(path);
        }
        Vit model(backend_, loaded.config.model, kBatch);
        load_into(loaded, model, nullptr);
        model.forward(images_->pixels, images_->labels, kBatch, Pass::Evaluate);
        return model.logits_host();
    }

    static float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
        EXPECT_EQ(a.size(), b.size());
        float d = 0;
        for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
            d = std::max(d, std::fabs(a[i] - b[i]));
        }
        return d;
    }

    static UpcycleOptions upcycle_options(const std::string& router, double cf,
                                          const std::string& combine) {
        UpcycleOptions o;
        o.moe.experts = kExperts;
        o.moe.layers = "all";  // every MLP becomes an MoE: the strictest check
        o.moe.router = parse_choice<RouterKind>(router, "test", "router");
        o.moe.k = 2;
        o.moe.capacity_factor = cf;
        o.moe.eval_capacity_factor = cf;
        o.moe.combine = parse_choice<Combine>(combine, "test", "combine");
        o.router_init = "normal";
        o.expert_init = "copy";
        o.seed = 3;
        return o;
    }

    static inline CpuBackend backend_;
    static inline TempDir* dir_ = nullptr;
    static inline Checkpoint* dense_ = nullptr;
    static inline Images* images_ = nullptr;
    static inline std::vector<float>* dense_logits_ = nullptr;
};

TEST_F(VitSurgery, DenseLogitsAreNotTrivial) {
    // The check below is only meaningful if the logits vary with the image.
    const auto& l = *dense_logits_;
    ASSERT_EQ(l.size(), static_cast<std::size_t>(kBatch * kClasses));
    float spread = 0;
    for (int c = 0; c < kClasses; ++c) spread = std::max(spread, std::fabs(l[c] - l[kClasses + c]));
    EXPECT_GT(spread, 1e-2f);
    // and the MLPs matter: zeroing them changes the logits
    Checkpoint no_mlp = *dense_;
    for (auto& [name, tensor] : no_mlp.file.tensors) {
        if (name.find(".mlp.") != std::string::npos)
            std::fill(tensor.data.begin(), tensor.data.end(), 0.0f);
    }
    EXPECT_GT(max_abs_diff(logits_of(no_mlp), l), 1e-2f);
}

TEST_F(VitSurgery, TopkRenormalizedUnlimitedEqualsTheDenseParent) {
    const Checkpoint moe =
        upcycle_checkpoint(*dense_, upcycle_options("topk", 0.0, "renormalized"));
    ASSERT_EQ(moe.config.model.moe.experts, kExperts);
    EXPECT_EQ(moe.state.step, dense_->state.step);
    const float d = max_abs_diff(logits_of(moe, "topk_renorm"), *dense_logits_);
    RecordProperty("max_abs_diff", sci(d));
    EXPECT_LT(d, 1e-5f) << "max |Δ logits| = " << d;
}

TEST_F(VitSurgery, ExpertChoiceAtCapacityFactorEEqualsTheDenseParent) {
    for (const std::string combine : {"renormalized", "softmax_topk"}) {
        const Checkpoint moe = upcycle_checkpoint(
            *dense_, upcycle_options("expert_choice", static_cast<double>(kExperts), combine));
        EXPECT_EQ(to_string(moe.config.model.moe.router), "expert_choice");
        const float d = max_abs_diff(logits_of(moe, "ec_" + combine), *dense_logits_);
        RecordProperty("max_abs_diff_" + combine, sci(d));
        EXPECT_LT(d, 1e-5f) << combine << ": max |Δ logits| = " << d;
    }
}

// Negative control: at capacity factor 1 each expert takes N/E tokens, so some tokens get no
// expert (their MLP output is zero) and the function changes — the checks above can fail.
TEST_F(VitSurgery, ExpertChoiceAtCapacityFactorOneDoesNotEqualTheDenseParent) {
    const Checkpoint moe =
        upcycle_checkpoint(*dense_, upcycle_options("expert_choice", 1.0, "renormalized"));
    const float d = max_abs_diff(logits_of(moe, "ec_cf1"), *dense_logits_);
    RecordProperty("max_abs_diff", sci(d));
    EXPECT_GT(d, 1e-3f) << "max |Δ logits| = " << d;
}

TEST_F(VitSurgery, WarmstartLoadsRunsAndKeepsTheNonBlockTensors) {
    const Checkpoint deep = warmstart_checkpoint(*dense_, 2, "stack", "reset");
    EXPECT_EQ(deep.config.model.layers, 4);
    EXPECT_EQ(deep.config.model.moe.experts, 0);
    EXPECT_EQ(deep.state.step, dense_->state.step);
    for (const char* name : {"patch.weight", "patch.bias", "cls", "wpe.weight", "head.weight",
                             "head.bias", "lnf.weight"}) {
        EXPECT_EQ(deep.file.tensors.at(name).data, dense_->file.tensors.at(name).data) << name;
    }
    // stack: block 2 is block 0, block 3 is block 1
    EXPECT_EQ(deep.file.tensors.at("blocks.2.attn.qkv.weight").data,
              dense_->file.tensors.at("blocks.0.attn.qkv.weight").data);
    EXPECT_EQ(deep.file.tensors.at("blocks.3.mlp.fc.weight").data,
              dense_->file.tensors.at("blocks.1.mlp.fc.weight").data);
    const auto logits = logits_of(deep, "warmstart");
    ASSERT_EQ(logits.size(), static_cast<std::size_t>(kBatch * kClasses));
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    // a deeper model is a different function (no function preservation for warm start)
    EXPECT_GT(max_abs_diff(logits, *dense_logits_), 1e-4f);
}

TEST_F(VitSurgery, ScratchLoadsAndRuns) {
    MoeConfig moe;
    moe.experts = kExperts;
    moe.router = RouterKind::ExpertChoice;
    moe.capacity_factor = 2.0;
    moe.eval_capacity_factor = 2.0;
    const Checkpoint scratch = scratch_checkpoint(*dense_, moe, 9, backend_);
    EXPECT_EQ(scratch.config.model.moe.experts, kExperts);
    EXPECT_EQ(to_string(scratch.config.model.arch), "vit");
    EXPECT_EQ(scratch.state.step, 0);
    EXPECT_FALSE(scratch.has_optimizer);
    EXPECT_EQ(scratch.state.data_rng, dense_->state.data_rng);
    // a fresh init, not the parent's weights
    EXPECT_NE(scratch.file.tensors.at("patch.weight").data,
              dense_->file.tensors.at("patch.weight").data);
    const auto logits = logits_of(scratch, "scratch");
    ASSERT_EQ(logits.size(), static_cast<std::size_t>(kBatch * kClasses));
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

}  // namespace
}  // namespace upcycle
