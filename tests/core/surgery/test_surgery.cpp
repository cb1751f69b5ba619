// Surgery: upcycle (copy / noise / drop experts, router init, optimizer reset / copy), warm
// start by depth tiling (stack / interleave), the scratch baseline, the refusals, and the
// `upcycle surgery` command line. A small dense checkpoint is trained once for the suite.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/model/gpt.h"
#include "core/surgery/continuation.h"
#include "core/surgery/scratch.h"
#include "core/surgery/upcycle.h"
#include "core/surgery/warmstart.h"
#include "core/train.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

constexpr int kLayers = 4;
constexpr int kChannels = 32;           // C
constexpr int kHidden = 4 * kChannels;  // 4C

std::string block(int l) { return "blocks." + std::to_string(l) + "."; }
std::string expert(int l, int e) { return block(l) + "mlp.experts." + std::to_string(e) + "."; }

struct Stats {
    double mean = 0, std = 0;
};
Stats stats(const std::vector<double>& v) {
    Stats s;
    for (double x : v) s.mean += x;
    s.mean /= static_cast<double>(v.size());
    for (double x : v) s.std += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(s.std / static_cast<double>(v.size()));
    return s;
}
Stats stats(const std::vector<float>& v) { return stats(std::vector<double>(v.begin(), v.end())); }

// A dense 4-block GPT trained for 3 steps (so its weights, biases and moments are non-trivial),
// read back from its checkpoint file.
class Surgery : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir;
        RunConfig config = testing::tiny_synthetic_config();
        config.model.layers = kLayers;
        config.train.steps = 3;
        config.train.warmup_steps = 1;
        config.eval.every = 0;
        config.eval.max_windows = 4;
        TrainOptions options;
        options.out_dir = dir_->path() / "dense";
        train(backend_, config, options);
        dense_ = new Checkpoint(read_checkpoint(checkpoint_path(options.out_dir)));
    }
    static void TearDownTestSuite() {
        delete dense_;
        delete dir_;
    }
    static const Checkpoint& dense() { return *dense_; }
    static const std::vector<float>& dense_tensor(const std::string& name) {
        return dense_->file.tensors.at(name).data;
    }
    static const std::vector<float>& tensor(const Checkpoint& c, const std::string& name) {
        const auto it = c.file.tensors.find(name);
        if (it == c.file.tensors.end()) throw std::runtime_error("no tensor " + name);
        return it->second.data;
    }
    static UpcycleOptions options(int experts = 4) {
        UpcycleOptions o;
        o.moe.experts = experts;
        return o;
    }
    // Writes and reads back: the result must pass read_checkpoint's validation.
    static Checkpoint round_trip(const Checkpoint& c, const std::string& name) {
        const auto path = dir_->path() / (name + ".safetensors");
        write_checkpoint(path, c, backend_);
        return read_checkpoint(path);
    }

    static inline CpuBackend backend_;
    static inline TempDir* dir_ = nullptr;
    static inline Checkpoint* dense_ = nullptr;
};

bool is_mlp(const std::string& name) { return name.find(".mlp.") != std::string::npos; }

TEST_F(Surgery, DenseFixtureHasOptimizerStateAndNontrivialBiases) {
    ASSERT_TRUE(dense().has_optimizer);
    EXPECT_EQ(dense().state.step, 3);
    EXPECT_EQ(dense().optimizer_step, 3);
    EXPECT_GT(stats(dense_tensor("blocks.1.mlp.fc.bias")).std, 0);
    EXPECT_GT(stats(dense_tensor("blocks.1.mlp.proj.bias")).std, 0);
}

TEST_F(Surgery, UpcycleCopyMakesExactExpertsAndCopiesEverythingElse) {
    UpcycleOptions o = options(8);
    o.moe.k = 2;
    o.moe.combine = Combine::Renormalized;
    const Checkpoint moe = upcycle_checkpoint(dense(), o);

    EXPECT_EQ(moe.config.model.moe.experts, 8);
    EXPECT_EQ(to_string(moe.config.model.moe.combine), "renormalized");
    EXPECT_EQ(moe.config.model.moe.layers, "every_other");
    EXPECT_EQ(moe_layer_indices(moe.config.model), (std::vector<int>{1, 3}));
    EXPECT_EQ(to_json(moe.config)["train"], to_json(dense().config)["train"]);

    // tensor order = the MoE model's layout; no optimizer state (reset is the default)
    const auto layout = gpt_parameter_layout(moe.config.model);
    ASSERT_EQ(moe.file.order.size(), layout.size());
    for (std::size_t i = 0; i < layout.size(); ++i) EXPECT_EQ(moe.file.order[i], layout[i].name);
    EXPECT_FALSE(moe.has_optimizer);

    // only blocks 1 and 3 changed
    for (int l : {0, 2}) {
        EXPECT_EQ(tensor(moe, block(l) + "mlp.fc.weight"),
                  dense_tensor(block(l) + "mlp.fc.weight"));
        EXPECT_EQ(moe.file.tensors.count(block(l) + "mlp.router.weight"), 0u);
    }
    for (int l : {1, 3}) {
        EXPECT_EQ(moe.file.tensors.count(block(l) + "mlp.fc.weight"), 0u);
        for (int e = 0; e < 8; ++e) {
            for (const char* t : {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}) {
                EXPECT_EQ(tensor(moe, expert(l, e) + t), dense_tensor(block(l) + "mlp." + t))
                    << expert(l, e) + t;
            }
        }
        const Stats router = stats(tensor(moe, block(l) + "mlp.router.weight"));
        EXPECT_NEAR(router.mean, 0.0, 0.004);
        EXPECT_NEAR(router.std, kRouterInitStd, 0.004);
    }
    for (const auto& info : layout) {
        if (!is_mlp(info.name)) {
            EXPECT_EQ(tensor(moe, info.name), dense_tensor(info.name)) << info.name;
        }
    }

    // training state carried over (the continuation keeps the LR schedule's step)
    EXPECT_EQ(moe.state.step, dense().state.step);
    EXPECT_EQ(moe.state.tokens, dense().state.tokens);
    EXPECT_EQ(moe.state.flops, dense().state.flops);
    EXPECT_EQ(moe.state.seconds, dense().state.seconds);
    EXPECT_EQ(moe.state.data_rng, dense().state.data_rng);

    const auto record = nlohmann::json::parse(moe.metadata.at("upcycle.surgery"));
    EXPECT_EQ(record["method"], "upcycle");
    EXPECT_EQ(record["expert_init"], "copy");
    EXPECT_EQ(record["moe_layers"], nlohmann::json({1, 3}));
    EXPECT_EQ(record["moe"]["experts"], 8);

    // through a file: validated by read_checkpoint, identical tensors
    const Checkpoint back = round_trip(moe, "upcycled");
    EXPECT_EQ(back.file.order, moe.file.order);
    for (const auto& name : moe.file.order)
        EXPECT_EQ(tensor(back, name), tensor(moe, name)) << name;
    EXPECT_EQ(to_json(back.config), to_json(moe.config));
    EXPECT_EQ(back.state.step, dense().state.step);
    EXPECT_EQ(back.state.data_rng, dense().state.data_rng);
    EXPECT_FALSE(back.has_optimizer);
    EXPECT_EQ(back.metadata.at("upcycle.surgery"), moe.metadata.at("upcycle.surgery"));
    EXPECT_TRUE(back.metadata.count("upcycle.parent_provenance"));
}

TEST_F(Surgery, UpcycleLayerChoicesAndZeroRouter) {
    UpcycleOptions o = options(2);
    o.moe.layers = "all";
    o.router_init = "zeros";
    const Checkpoint all = upcycle_checkpoint(dense(), o);
    for (int l = 0; l < kLayers; ++l) {
        for (float v : tensor(all, block(l) + "mlp.router.weight")) EXPECT_EQ(v, 0.0f);
    }
    o.moe.layers = "0,2";
    const Checkpoint listed = upcycle_checkpoint(dense(), o);
    EXPECT_TRUE(listed.file.tensors.count("blocks.0.mlp.router.weight"));
    EXPECT_TRUE(listed.file.tensors.count("blocks.2.mlp.router.weight"));
    EXPECT_TRUE(listed.file.tensors.count("blocks.1.mlp.fc.weight"));
    EXPECT_TRUE(listed.file.tensors.count("blocks.3.mlp.fc.weight"));
    round_trip(listed, "listed");
}

TEST_F(Surgery, UpcycleIsDeterministicAndTheRouterFollowsTheSeed) {
    UpcycleOptions o = options(4);
    o.expert_init = "noise";
    const Checkpoint a = upcycle_checkpoint(dense(), o);
    const Checkpoint b = upcycle_checkpoint(dense(), o);
    for (const auto& name : a.file.order) EXPECT_EQ(tensor(a, name), tensor(b, name)) << name;
    // the router draws from its own stream: the same whatever the expert init
    o.expert_init = "copy";
    const Checkpoint c = upcycle_checkpoint(dense(), o);
    EXPECT_EQ(tensor(c, "blocks.1.mlp.router.weight"), tensor(a, "blocks.1.mlp.router.weight"));
    o.seed = 1;
    const Checkpoint d = upcycle_checkpoint(dense(), o);
    EXPECT_NE(tensor(d, "blocks.1.mlp.router.weight"), tensor(a, "blocks.1.mlp.router.weight"));
}

TEST_F(Surgery, NoiseExpertsDifferWithRelativeStdSigma) {
    UpcycleOptions o = options(4);
    o.expert_init = "noise";
    o.noise_std = 0.01;
    const Checkpoint moe = upcycle_checkpoint(dense(), o);
    for (int l : {1, 3}) {
        for (const char* t : {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}) {
            const auto& w = dense_tensor(block(l) + "mlp." + t);
            const double w_std = stats(w).std;
            ASSERT_GT(w_std, 0);
            std::vector<std::vector<float>> experts;
            for (int e = 0; e < 4; ++e) {
                const auto& we = tensor(moe, expert(l, e) + t);
                std::vector<double> relative;
                for (std::size_t i = 0; i < w.size(); ++i)
                    relative.push_back((we[i] - w[i]) / w_std);
                const Stats s = stats(relative);
                // tolerance: the sample std of n normals is σ(1 ± 1/sqrt(2n)); biases are small
                const double tolerance = 0.01 * (w.size() >= 1000 ? 0.1 : 0.4);
                EXPECT_NEAR(s.std, 0.01, tolerance) << expert(l, e) << t;
                EXPECT_NE(we, w);
                for (const auto& other : experts) EXPECT_NE(we, other);
                experts.push_back(we);
            }
        }
    }
    // everything outside the MLPs untouched
    for (const auto& name : moe.file.order) {
        if (!is_mlp(name)) {
            EXPECT_EQ(tensor(moe, name), dense_tensor(name)) << name;
        }
    }
}

// The hidden neurons whose fc.weight row, fc.bias entry or proj.weight column differ.
struct Changed {
    std::set<int> fc_rows, fc_bias, proj_columns;
};
Changed changed_neurons(const std::vector<float>& fc_w, const std::vector<float>& fc_w0,
                        const std::vector<float>& fc_b, const std::vector<float>& fc_b0,
                        const std::vector<float>& proj_w, const std::vector<float>& proj_w0) {
    Changed c;
    for (int n = 0; n < kHidden; ++n) {
        for (int i = 0; i < kChannels; ++i) {
            if (fc_w[n * kChannels + i] != fc_w0[n * kChannels + i]) c.fc_rows.insert(n);
            if (proj_w[i * kHidden + n] != proj_w0[i * kHidden + n]) c.proj_columns.insert(n);
        }
        if (fc_b[n] != fc_b0[n]) c.fc_bias.insert(n);
    }
    return c;
}

TEST_F(Surgery, DropReinitialisesTheSameNeuronSetPerExpert) {
    for (double ratio : {0.5, 0.3}) {
        UpcycleOptions o = options(4);
        o.expert_init = "drop";
        o.drop_ratio = ratio;
        const Checkpoint moe = upcycle_checkpoint(dense(), o);
        const auto expected = static_cast<std::size_t>(std::llround(ratio * kHidden));  // 64, 38
        for (int l : {1, 3}) {
            const std::string m = block(l) + "mlp.";
            const auto& fc_w0 = dense_tensor(m + "fc.weight");
            const Stats fc_stats = stats(fc_w0);
            std::vector<std::set<int>> sets;
            for (int e = 0; e < 4; ++e) {
                const std::string x = expert(l, e);
                const auto& fc_w = tensor(moe, x + "fc.weight");
                const Changed c = changed_neurons(
                    fc_w, fc_w0, tensor(moe, x + "fc.bias"), dense_tensor(m + "fc.bias"),
                    tensor(moe, x + "proj.weight"), dense_tensor(m + "proj.weight"));
                EXPECT_EQ(c.fc_rows.size(), expected);
                EXPECT_EQ(c.fc_bias, c.fc_rows);
                EXPECT_EQ(c.proj_columns, c.fc_rows);
                EXPECT_EQ(tensor(moe, x + "proj.bias"), dense_tensor(m + "proj.bias"));
                // whole rows are redrawn, from the dense tensor's mean and std
                std::vector<float> redrawn;
                for (int n : c.fc_rows) {
                    for (int i = 0; i < kChannels; ++i) {
                        EXPECT_NE(fc_w[n * kChannels + i], fc_w0[n * kChannels + i]);
                        redrawn.push_back(fc_w[n * kChannels + i]);
                    }
                }
                const Stats r = stats(redrawn);
                EXPECT_NEAR(r.mean, fc_stats.mean, 0.1 * fc_stats.std);
                EXPECT_NEAR(r.std, fc_stats.std, 0.1 * fc_stats.std);
                for (const auto& other : sets) EXPECT_NE(c.fc_rows, other);
                sets.push_back(c.fc_rows);
            }
        }
        const auto record = nlohmann::json::parse(moe.metadata.at("upcycle.surgery"));
        EXPECT_EQ(record["dropped_neurons_per_expert"], expected);
    }
}

TEST_F(Surgery, OptimizerCopyGivesExpertsTheMlpMomentsAndTheRouterZeros) {
    UpcycleOptions o = options(4);
    o.optimizer_state = "copy";
    const Checkpoint moe = upcycle_checkpoint(dense(), o);
    ASSERT_TRUE(moe.has_optimizer);
    EXPECT_EQ(moe.optimizer_step, dense().optimizer_step);
    const auto layout = gpt_parameter_layout(moe.config.model);
    // weights in layout order, then each weight's two moments in turn (as save_checkpoint)
    ASSERT_EQ(moe.file.order.size(), 3 * layout.size());
    for (std::size_t i = 0; i < layout.size(); ++i) {
        EXPECT_EQ(moe.file.order[layout.size() + 2 * i], kOptimizerExpAvgPrefix + layout[i].name);
        EXPECT_EQ(moe.file.order[layout.size() + 2 * i + 1],
                  kOptimizerExpAvgSqPrefix + layout[i].name);
    }
    for (const char* prefix : {kOptimizerExpAvgPrefix, kOptimizerExpAvgSqPrefix}) {
        const std::string p = prefix;
        for (int l : {1, 3}) {
            for (float v : tensor(moe, p + block(l) + "mlp.router.weight")) EXPECT_EQ(v, 0.0f);
            for (int e = 0; e < 4; ++e) {
                for (const char* t : {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}) {
                    const auto& dense_moment = dense_tensor(p + block(l) + "mlp." + t);
                    EXPECT_EQ(tensor(moe, p + expert(l, e) + t), dense_moment);
                    EXPECT_GT(stats(dense_moment).std, 0) << p << t;
                }
            }
        }
        for (const auto& info : layout) {
            if (!is_mlp(info.name)) {
                EXPECT_EQ(tensor(moe, p + info.name), dense_tensor(p + info.name))
                    << p << info.name;
            }
        }
    }
    const Checkpoint back = round_trip(moe, "optimizer_copy");
    EXPECT_TRUE(back.has_optimizer);
    EXPECT_EQ(back.optimizer_step, dense().optimizer_step);
    // the moments load into an optimizer for the MoE model
    CpuBackend backend;
    Gpt model(backend, back.config.model, 1);
    AdamW optimizer(backend, model.num_parameters());
    load_into(back, model, &optimizer);
    EXPECT_EQ(optimizer.step(), dense().optimizer_step);
}

TEST_F(Surgery, OptimizerResetWritesNoMoments) {
    const Checkpoint moe = upcycle_checkpoint(dense(), options(4));
    EXPECT_FALSE(moe.has_optimizer);
    EXPECT_EQ(moe.optimizer_step, 0);
    EXPECT_FALSE(moe.metadata.count("upcycle.optimizer_step"));
    for (const auto& name : moe.file.order) EXPECT_NE(name.rfind("optimizer.", 0), 0u) << name;
    const Checkpoint back = round_trip(moe, "optimizer_reset");
    EXPECT_FALSE(back.has_optimizer);
}

TEST_F(Surgery, WarmstartTilesBlocks) {
    for (const std::string tiling : {"stack", "interleave"}) {
        const Checkpoint deep = warmstart_checkpoint(dense(), 2, tiling, "copy");
        EXPECT_EQ(deep.config.model.layers, 2 * kLayers);
        EXPECT_EQ(deep.config.model.moe.experts, 0);
        const std::vector<int> expected = tiling == "stack"
                                              ? std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3}
                                              : std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3};
        EXPECT_EQ(warmstart_source_blocks(kLayers, 2, tiling), expected);
        const auto layout = gpt_parameter_layout(deep.config.model);
        ASSERT_EQ(deep.file.order.size(), 3 * layout.size());
        for (std::size_t i = 0; i < layout.size(); ++i)
            EXPECT_EQ(deep.file.order[i], layout[i].name);
        for (const std::string p : {"", kOptimizerExpAvgPrefix, kOptimizerExpAvgSqPrefix}) {
            for (int j = 0; j < 2 * kLayers; ++j) {
                for (const char* t : {"ln1.weight", "attn.qkv.weight", "attn.proj.bias", "ln2.bias",
                                      "mlp.fc.weight", "mlp.proj.weight", "mlp.proj.bias"}) {
                    EXPECT_EQ(tensor(deep, p + block(j) + t),
                              dense_tensor(p + block(expected[j]) + t))
                        << tiling << " " << p << block(j) << t;
                }
            }
            for (const char* t : {"wte.weight", "wpe.weight", "lnf.weight", "lnf.bias"}) {
                EXPECT_EQ(tensor(deep, p + t), dense_tensor(p + t));
            }
        }
        EXPECT_EQ(deep.state.step, dense().state.step);
        EXPECT_EQ(deep.optimizer_step, dense().optimizer_step);
        const Checkpoint back = round_trip(deep, "warm_" + tiling);
        EXPECT_EQ(back.config.model.layers, 2 * kLayers);
        EXPECT_TRUE(back.has_optimizer);
    }
    const Checkpoint triple = warmstart_checkpoint(dense(), 3, "interleave", "reset");
    EXPECT_EQ(triple.config.model.layers, 3 * kLayers);
    EXPECT_FALSE(triple.has_optimizer);
    EXPECT_EQ(tensor(triple, "blocks.5.attn.qkv.weight"), dense_tensor("blocks.1.attn.qkv.weight"));
    const auto record = nlohmann::json::parse(triple.metadata.at("upcycle.surgery"));
    EXPECT_EQ(record["method"], "warmstart");
    EXPECT_EQ(record["source_blocks"], nlohmann::json({0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}));
}

TEST_F(Surgery, ScratchIsRandomDeterministicAndStartsAtStepZero) {
    MoeConfig moe;
    moe.experts = 4;
    CpuBackend backend;
    const Checkpoint a = scratch_checkpoint(dense(), moe, 7, backend);
    const Checkpoint b = scratch_checkpoint(dense(), moe, 7, backend);
    const Checkpoint c = scratch_checkpoint(dense(), moe, 8, backend);
    EXPECT_EQ(a.config.model.moe.experts, 4);
    EXPECT_FALSE(a.has_optimizer);
    EXPECT_EQ(a.state.step, 0);
    EXPECT_EQ(a.state.tokens, 0);
    EXPECT_EQ(a.state.flops, 0);
    EXPECT_EQ(a.state.seconds, 0);
    EXPECT_EQ(a.state.data_rng, dense().state.data_rng);
    for (const auto& name : a.file.order) {
        EXPECT_EQ(tensor(a, name), tensor(b, name)) << name;
        EXPECT_NE(name.rfind("optimizer.", 0), 0u);
    }
    EXPECT_NE(tensor(a, "wte.weight"), tensor(c, "wte.weight"));
    EXPECT_NE(tensor(a, "wte.weight"), dense_tensor("wte.weight"));
    EXPECT_NE(tensor(a, "blocks.1.mlp.experts.0.fc.weight"),
              tensor(a, "blocks.1.mlp.experts.1.fc.weight"));
    EXPECT_NEAR(stats(tensor(a, "blocks.1.mlp.experts.2.fc.weight")).std, 0.02, 0.002);
    EXPECT_NEAR(stats(tensor(a, "blocks.3.mlp.router.weight")).std, 0.02, 0.004);
    for (float v : tensor(a, "blocks.0.ln1.weight")) EXPECT_EQ(v, 1.0f);

    // exactly Gpt::init_weights(seed)
    Gpt model(backend, a.config.model, 1);
    model.init_weights(7);
    const auto flat = model.parameters().to_host();
    for (const auto& info : model.layout()) {
        const std::vector<float> expected(
            flat.begin() + static_cast<std::ptrdiff_t>(info.offset),
            flat.begin() + static_cast<std::ptrdiff_t>(info.offset + info.numel));
        EXPECT_EQ(tensor(a, info.name), expected) << info.name;
    }
    const Checkpoint back = round_trip(a, "scratch");
    EXPECT_EQ(back.state.step, 0);
    EXPECT_FALSE(back.has_optimizer);
    EXPECT_EQ(nlohmann::json::parse(back.metadata.at("upcycle.surgery"))["method"], "scratch");
}

// Upcycling with copied experts, renormalised top-k combine and no capacity limit preserves the
// dense model's function: the same logits at step 0.
// make_continuation routes each method to its surgery with that method's options, and dense
// continuation to the parent itself.
TEST_F(Surgery, MakeContinuationRoutesEachMethodToItsSurgery) {
    ContinuationOptions o;
    o.upcycle = options(4);
    o.scratch.moe = options(2).moe;
    o.scratch.seed = 5;
    o.warmstart.depth_multiplier = 3;
    o.warmstart.tiling = "interleave";

    const Checkpoint dense_copy = make_continuation(Method::Dense, o, dense(), backend_);
    EXPECT_FALSE(makes_new_checkpoint(Method::Dense));
    EXPECT_EQ(dense_copy.file.order, dense().file.order);
    EXPECT_EQ(dense_copy.file.tensors.at("wte.weight").data, dense_tensor("wte.weight"));

    const Checkpoint up = make_continuation(Method::Upcycle, o, dense(), backend_);
    const Checkpoint direct = upcycle_checkpoint(dense(), o.upcycle);
    EXPECT_EQ(up.config.model.moe.experts, 4);
    EXPECT_EQ(up.file.order, direct.file.order);
    EXPECT_EQ(tensor(up, block(1) + "mlp.router.weight"),
              tensor(direct, block(1) + "mlp.router.weight"));

    const Checkpoint scratch = make_continuation(Method::Scratch, o, dense(), backend_);
    EXPECT_EQ(scratch.config.model.moe.experts, 2);
    EXPECT_EQ(scratch.state.step, 0);
    EXPECT_EQ(tensor(scratch, "wte.weight"),
              tensor(scratch_checkpoint(dense(), o.scratch.moe, 5, backend_), "wte.weight"));

    const Checkpoint deeper = make_continuation(Method::Warmstart, o, dense(), backend_);
    EXPECT_EQ(deeper.config.model.layers, 3 * kLayers);
    // interleave: block 1 of the deeper model is a copy of block 0
    EXPECT_EQ(tensor(deeper, block(1) + "mlp.fc.weight"), dense_tensor(block(0) + "mlp.fc.weight"));
    EXPECT_TRUE(makes_new_checkpoint(Method::Warmstart));
}

TEST_F(Surgery, UpcycledCopyPreservesTheDenseFunction) {
    UpcycleOptions o = options(4);
    o.moe.k = 2;
    o.moe.combine = Combine::Renormalized;
    o.moe.capacity_factor = 0;
    o.moe.eval_capacity_factor = 0;
    for (const std::string layers : {"every_other", "all"}) {
        o.moe.layers = layers;
        const Checkpoint moe = upcycle_checkpoint(dense(), o);
        const RunConfig& config = dense().config;
        const int B = 2, T = config.model.context;
        std::vector<int32_t> inputs(static_cast<std::size_t>(B * T)), targets(inputs.size());
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            inputs[i] = static_cast<int32_t>((i * 37 + 11) % 256);
            targets[i] = static_cast<int32_t>((i * 53 + 5) % 256);
        }
        CpuBackend backend;
        Gpt dense_model(backend, config.model, B);
        load_into(dense(), dense_model, nullptr);
        const ForwardStats dense_stats = dense_model.forward(inputs, targets, B, Pass::Evaluate);
        Gpt moe_model(backend, moe.config.model, B);
        load_into(moe, moe_model, nullptr);
        const ForwardStats moe_stats = moe_model.forward(inputs, targets, B, Pass::Evaluate);
        const auto a = dense_model.logits_host(), b = moe_model.logits_host();
        ASSERT_EQ(a.size(), b.size());
        double max_diff = 0;
        for (std::size_t i = 0; i < a.size(); ++i)
            max_diff = std::max(max_diff, double(std::fabs(a[i] - b[i])));
        EXPECT_LE(max_diff, 1e-5) << layers;
        EXPECT_NEAR(moe_stats.loss_sum, dense_stats.loss_sum, 1e-3) << layers;
    }
}

template <class F>
UserError user_error(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e;
    }
    ADD_FAILURE() << "expected a UserError";
    return UserError("", "", "");
}

TEST_F(Surgery, Refusals) {
    const Checkpoint moe = upcycle_checkpoint(dense(), options(4));
    CpuBackend backend;
    {
        const auto e = user_error([&] { upcycle_checkpoint(moe, options(4)); });
        EXPECT_EQ(e.key(), "model.moe.experts");
        EXPECT_NE(std::string(e.what()).find("already a Mixture-of-Experts"), std::string::npos);
    }
    EXPECT_EQ(user_error([&] { warmstart_checkpoint(moe, 2, "stack", "reset"); }).key(),
              "model.moe.experts");
    EXPECT_EQ(user_error([&] { scratch_checkpoint(moe, options(4).moe, 0, backend); }).key(),
              "model.moe.experts");
    {
        UpcycleOptions o = options(4);
        o.moe.router = RouterKind::ExpertChoice;
        const auto e = user_error([&] { upcycle_checkpoint(dense(), o); });
        EXPECT_EQ(e.key(), "model.moe.router");
        EXPECT_NE(std::string(e.what()).find("leaks the future"), std::string::npos) << e.what();
        EXPECT_EQ(user_error([&] { scratch_checkpoint(dense(), o.moe, 0, backend); }).key(),
                  "model.moe.router");
    }
    {
        UpcycleOptions o = options(2);
        o.moe.k = 3;
        EXPECT_EQ(user_error([&] { upcycle_checkpoint(dense(), o); }).key(), "model.moe.k");
    }
    EXPECT_EQ(user_error([&] { upcycle_checkpoint(dense(), options(0)); }).key(),
              "model.moe.experts");
    {
        UpcycleOptions o = options(4);
        o.moe.layers = "1,9";
        EXPECT_EQ(user_error([&] { upcycle_checkpoint(dense(), o); }).key(), "model.moe.layers");
    }
    auto bad = [&](auto change, const std::string& key) {
        UpcycleOptions o = options(4);
        change(o);
        EXPECT_EQ(user_error([&] { upcycle_checkpoint(dense(), o); }).key(), key);
    };
    bad([](UpcycleOptions& o) { o.expert_init = "clone"; }, "expert_init");
    bad([](UpcycleOptions& o) { o.router_init = "uniform"; }, "router_init");
    bad([](UpcycleOptions& o) { o.noise_std = -1; }, "noise_std");
    bad([](UpcycleOptions& o) { o.drop_ratio = 1.5; }, "drop_ratio");
    bad([](UpcycleOptions& o) { o.optimizer_state = "keep"; }, "optimizer_state");
    {
        const auto e = user_error([&] { warmstart_checkpoint(dense(), 1, "stack", "reset"); });
        EXPECT_EQ(e.key(), "depth_multiplier");
    }
    EXPECT_EQ(user_error([&] { warmstart_checkpoint(dense(), 2, "zigzag", "reset"); }).key(),
              "tiling");
    // copying moments that are not there
    const Checkpoint deep = warmstart_checkpoint(dense(), 2, "stack", "reset");
    EXPECT_EQ(user_error([&] { warmstart_checkpoint(deep, 2, "stack", "copy"); }).key(),
              "optimizer_state");
    UpcycleOptions copy = options(4);
    copy.optimizer_state = "copy";
    EXPECT_EQ(user_error([&] { upcycle_checkpoint(deep, copy); }).key(), "optimizer_state");
}

// ---- the command line (through ctest, which sets UPCYCLE_BIN) --------------------------------

using testing::run_cli;

TEST_F(Surgery, CommandLine) {
    if (!std::getenv("UPCYCLE_BIN")) GTEST_SKIP() << "UPCYCLE_BIN not set; run through ctest";
    TempDir dir;
    const std::string in = dense().path.string();
    const std::string out = (dir / "moe.safetensors").string();

    auto r =
        run_cli("surgery --method upcycle --in " + in + " --out " + out +
                " --experts 4 --k 1 --init drop --drop-ratio 0.25 --optimizer-state copy --seed 3");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("E=4"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("blocks 1,3"), std::string::npos) << r.output;
    const Checkpoint moe = read_checkpoint(out);
    EXPECT_EQ(moe.config.model.moe.experts, 4);
    EXPECT_EQ(moe.config.model.moe.k, 1);
    EXPECT_TRUE(moe.has_optimizer);
    UpcycleOptions o = options(4);
    o.moe.k = 1;
    o.expert_init = "drop";
    o.drop_ratio = 0.25;
    o.optimizer_state = "copy";
    o.seed = 3;
    const Checkpoint same = upcycle_checkpoint(dense(), o);
    for (const auto& name : same.file.order)
        EXPECT_EQ(tensor(moe, name), tensor(same, name)) << name;

    r = run_cli("surgery --method warmstart --in " + in + " --out " +
                (dir / "deep.safetensors").string() + " --depth-multiplier 2 --tiling interleave");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(read_checkpoint(dir / "deep.safetensors").config.model.layers, 2 * kLayers);

    r = run_cli("surgery --method scratch --in " + in + " --out " +
                (dir / "scratch.safetensors").string() + " --experts 2 --layers all");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(read_checkpoint(dir / "scratch.safetensors").state.step, 0);

    const std::string bad_out = " --out " + (dir / "bad.safetensors").string();
    auto refused = [&](const std::string& args, const std::string& option) {
        const auto bad = run_cli("surgery " + args + bad_out +
                                 (args.find("--in ") == std::string::npos ? " --in " + in : ""));
        EXPECT_EQ(bad.exit_code, 2) << args << ": " << bad.output;
        EXPECT_NE(bad.output.find("'" + option + "'"), std::string::npos)
            << args << ": " << bad.output;
    };
    refused("--method upcycle --router expert_choice", "--router");
    refused("--method upcycle --experts 2 --k 3", "--k");
    refused("--method upcycle --init clone", "--init");
    refused("--method upcycle --noise-std 0.1", "--noise-std");
    refused("--method warmstart --depth-multiplier 1", "--depth-multiplier");
    refused("--method warmstart --experts 4", "--experts");
    refused("--method scratch --init noise", "--init");
    refused("--method transplant", "--method");
    refused("--method upcycle --in " + out, "model.moe.experts");  // already an MoE
    EXPECT_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
}

}  // namespace
}  // namespace upcycle
