// Importing a dense GPT-2 from Hugging Face and llm.c files, and exporting it back: a tiny
// model's weights are written here in each tool's layout (by hand, from the documented
// formats), imported, compared, round-tripped, and broken in the ways users' files break.
// The independent numerical oracle (a numpy GPT-2) is test_hf_gpt2_oracle.py beside this.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/import/hf_gpt2.h"
#include "core/import/imported_gpt.h"
#include "core/import/llmc_gpt2.h"
#include "core/model/gpt.h"
#include "core/surgery/continuation.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

// V odd and not a multiple of anything, as GPT-2's 50257.
ModelConfig tiny_gpt2() { return ModelConfig{Arch::Gpt, 67, 8, 16, 2, 2, {}}; }

// Every parameter random (biases and LayerNorms too, so a mix-up of any two shows).
std::map<std::string, HostTensor> random_weights(const ModelConfig& m, uint64_t seed) {
    Rng rng(seed);
    std::map<std::string, HostTensor> w;
    for (const auto& info : parameter_layout(m)) {
        HostTensor t{info.shape, std::vector<float>(info.numel)};
        for (auto& x : t.data) x = 0.5f * rng.normal();
        w[info.name] = std::move(t);
    }
    return w;
}

// [R, K] → [K, R]
std::vector<float> transposed(const HostTensor& t) {
    const int64_t R = t.shape[0], K = t.shape[1];
    std::vector<float> out(t.data.size());
    for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; ++k) out[k * R + r] = t.data[r * K + k];
    return out;
}

struct HfOptions {
    std::string prefix = "transformer.";
    bool lm_head = false;       // write lm_head.weight (= wte)
    bool mask_buffers = false;  // write h.{i}.attn.bias causal masks, as the original gpt2 files
    std::string skip;           // a tensor (their name, without prefix) left out
    std::string misshape;       // a tensor written with one row too few
    nlohmann::json config_changes = nlohmann::json::object();
};

// A GPT2LMHeadModel folder as transformers writes it: Conv1D weights [in, out].
void write_hf(const std::filesystem::path& dir, const ModelConfig& m,
              const std::map<std::string, HostTensor>& w, const HfOptions& o = {}) {
    std::filesystem::create_directories(dir);
    nlohmann::json config = {{"architectures", {"GPT2LMHeadModel"}},
                             {"model_type", "gpt2"},
                             {"vocab_size", m.vocab_size},
                             {"n_positions", m.context},
                             {"n_ctx", m.context},
                             {"n_embd", m.channels},
                             {"n_layer", m.layers},
                             {"n_head", m.heads},
                             {"n_inner", nullptr},
                             {"activation_function", "gelu_new"},
                             {"layer_norm_epsilon", 1e-5}};
    config.update(o.config_changes);
    std::ofstream(dir / "config.json") << config.dump(2);

    std::vector<std::vector<float>> storage;
    storage.reserve(64);
    std::vector<TensorView> views;
    auto add = [&](const std::string& theirs, const std::string& ours, bool conv1d) {
        if (theirs == o.skip) return;
        const HostTensor& t = w.at(ours);
        std::vector<int64_t> shape = t.shape;
        storage.push_back(conv1d ? transposed(t) : t.data);
        if (conv1d) std::swap(shape[0], shape[1]);
        if (theirs == o.misshape) shape[0] -= 1;
        views.push_back({o.prefix + theirs, shape, storage.back().data()});
    };
    add("wte.weight", "wte.weight", false);
    add("wpe.weight", "wpe.weight", false);
    for (int i = 0; i < m.layers; ++i) {
        const std::string h = "h." + std::to_string(i) + ".",
                          b = "blocks." + std::to_string(i) + ".";
        add(h + "ln_1.weight", b + "ln1.weight", false);
        add(h + "ln_1.bias", b + "ln1.bias", false);
        add(h + "attn.c_attn.weight", b + "attn.qkv.weight", true);
        add(h + "attn.c_attn.bias", b + "attn.qkv.bias", false);
        add(h + "attn.c_proj.weight", b + "attn.proj.weight", true);
        add(h + "attn.c_proj.bias", b + "attn.proj.bias", false);
        add(h + "ln_2.weight", b + "ln2.weight", false);
        add(h + "ln_2.bias", b + "ln2.bias", false);
        add(h + "mlp.c_fc.weight", b + "mlp.fc.weight", true);
        add(h + "mlp.c_fc.bias", b + "mlp.fc.bias", false);
        add(h + "mlp.c_proj.weight", b + "mlp.proj.weight", true);
        add(h + "mlp.c_proj.bias", b + "mlp.proj.bias", false);
        if (o.mask_buffers) {
            std::vector<float> mask(static_cast<std::size_t>(m.context) * m.context);
            for (int r = 0; r < m.context; ++r)
                for (int c = 0; c <= r; ++c) mask[r * m.context + c] = 1;
            storage.push_back(mask);
            views.push_back(
                {o.prefix + h + "attn.bias", {1, 1, m.context, m.context}, storage.back().data()});
        }
    }
    add("ln_f.weight", "lnf.weight", false);
    add("ln_f.bias", "lnf.bias", false);
    if (o.lm_head)
        views.push_back(
            {"lm_head.weight", w.at("wte.weight").shape, w.at("wte.weight").data.data()});
    write_safetensors(dir / "model.safetensors", views, {});
}

// llm.c's gpt2_*.bin: 256-int32 header, then its 16 tensors (all layers of each together),
// fp32 (versions 1, 3) or bf16 (5), wte padded to Vp rows with zeros (3, 5).
void write_llmc(const std::filesystem::path& path, const ModelConfig& m,
                const std::map<std::string, HostTensor>& w, int version, int Vp,
                int32_t magic = kLlmcModelMagic) {
    std::vector<int32_t> header(256, 0);
    header[0] = magic;
    header[1] = version;
    header[2] = m.context;
    header[3] = m.vocab_size;
    header[4] = m.layers;
    header[5] = m.heads;
    header[6] = m.channels;
    if (version != 1) header[7] = Vp;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), 1024);
    auto put = [&](const std::vector<float>& values) {
        for (const float v : values) {
            if (version == 5) {
                uint32_t bits;
                std::memcpy(&bits, &v, 4);
                const auto top = static_cast<uint16_t>(bits >> 16);  // exact for bf16 values
                out.write(reinterpret_cast<const char*>(&top), 2);
            } else {
                out.write(reinterpret_cast<const char*>(&v), 4);
            }
        }
    };
    std::vector<float> wte = w.at("wte.weight").data;
    if (version != 1) wte.resize(static_cast<std::size_t>(Vp) * m.channels, 0.0f);
    put(wte);
    put(w.at("wpe.weight").data);
    for (const char* suffix :
         {"ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
          "attn.proj.bias", "ln2.weight", "ln2.bias", "mlp.fc.weight", "mlp.fc.bias",
          "mlp.proj.weight", "mlp.proj.bias"}) {
        for (int i = 0; i < m.layers; ++i)
            put(w.at("blocks." + std::to_string(i) + "." + suffix).data);
    }
    put(w.at("lnf.weight").data);
    put(w.at("lnf.bias").data);
}

// Rounds every weight to bfloat16 (so a bf16 file holds them exactly).
void round_to_bf16(std::map<std::string, HostTensor>& w) {
    for (auto& [name, t] : w) {
        for (auto& x : t.data) {
            uint32_t bits;
            std::memcpy(&bits, &x, 4);
            bits &= 0xffff0000u;
            std::memcpy(&x, &bits, 4);
        }
    }
}

SunkCost sunk_tokens(double n) { return SunkCost{n, std::nullopt}; }
SunkCost sunk_flops(double f) { return SunkCost{std::nullopt, f}; }

// HfOptions with one change.
template <class F>
HfOptions hf(F&& change) {
    HfOptions o;
    change(o);
    return o;
}

template <class F>
UserError user_error(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e;
    }
    ADD_FAILURE() << "expected a UserError";
    return UserError("", "", "none");
}

void expect_weights_equal(const std::map<std::string, HostTensor>& got,
                          const std::map<std::string, HostTensor>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [name, t] : want) {
        ASSERT_TRUE(got.count(name)) << name;
        EXPECT_EQ(got.at(name).shape, t.shape) << name;
        EXPECT_EQ(got.at(name).data, t.data) << name;  // bit for bit
    }
}

TEST(ImportHfGpt2, ReadsEveryTensorIntoOurLayout) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    const auto w = random_weights(m, 1);
    write_hf(dir / "hf", m, w);
    const ImportedGpt got = read_hf_gpt2(dir / "hf");
    EXPECT_EQ(describe_model(got.model), describe_model(m));
    expect_weights_equal(got.weights, w);

    // the original gpt2 files: no prefix, causal-mask buffers, lm_head tied
    write_hf(dir / "bare", m, w, hf([](HfOptions& o) {
                 o.prefix = "";
                 o.lm_head = true;
                 o.mask_buffers = true;
             }));
    expect_weights_equal(read_hf_gpt2(dir / "bare").weights, w);
}

TEST(ImportHfGpt2, CheckpointCarriesTheDeclaredSunkCost) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    write_hf(dir / "hf", m, random_weights(m, 2));
    const ImportedGpt source = read_hf_gpt2(dir / "hf");
    const Checkpoint by_tokens = imported_checkpoint(source, sunk_tokens(1e6), "hf");
    EXPECT_EQ(by_tokens.state.step, 0);
    EXPECT_EQ(by_tokens.state.tokens, 1000000);
    EXPECT_DOUBLE_EQ(by_tokens.state.flops, 1e6 * flops_per_token(m).training);
    const auto record = import_record(by_tokens.metadata, "x");
    ASSERT_TRUE(record);
    EXPECT_EQ(record->format, "hf_gpt2");
    EXPECT_EQ(record->declared, "tokens");
    EXPECT_DOUBLE_EQ(record->sunk_flops, by_tokens.state.flops);
    EXPECT_EQ(record->sha256.size(), 64u);

    const Checkpoint by_flops = imported_checkpoint(source, sunk_flops(3e15), "hf");
    EXPECT_DOUBLE_EQ(by_flops.state.flops, 3e15);
    EXPECT_EQ(by_flops.state.tokens, 0);

    // written and read back as any checkpoint: surgery takes it and keeps the record
    auto backend = make_backend("cpu");
    write_checkpoint(dir / "imported.safetensors", by_tokens, *backend);
    const Checkpoint read = read_checkpoint(dir / "imported.safetensors");
    EXPECT_DOUBLE_EQ(import_record(read.metadata, read.path)->sunk_flops, by_tokens.state.flops);
    ContinuationOptions options;
    options.upcycle.moe.experts = 4;
    const Checkpoint moe = make_continuation(Method::Upcycle, options, read, *backend);
    EXPECT_EQ(moe.config.model.moe.experts, 4);
    EXPECT_TRUE(import_record(moe.metadata, "moe"));

    // exactly one cost, positive
    EXPECT_EQ(user_error([&] { imported_checkpoint(source, {}, "hf"); }).key(), "--sunk-tokens");
    EXPECT_EQ(user_error([&] {
                  imported_checkpoint(source, SunkCost{1.0, 1.0}, "hf");
              }).key(),
              "--sunk-tokens");
    EXPECT_EQ(user_error([&] { imported_checkpoint(source, sunk_flops(-1), "hf"); }).key(),
              "--sunk-flops");
}

TEST(ImportHfGpt2, ContextMayBeLoweredButTheShapeIsKept) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    const auto w = random_weights(m, 3);
    write_hf(dir / "hf", m, w);
    const ImportedGpt source = read_hf_gpt2(dir / "hf");
    const Checkpoint short_context =
        imported_checkpoint(source, sunk_tokens(1e3), "hf", {"model.context=5"});
    EXPECT_EQ(short_context.config.model.context, 5);
    const auto& wpe = short_context.file.tensors.at("wpe.weight");
    EXPECT_EQ(wpe.shape, (std::vector<int64_t>{5, 16}));
    EXPECT_TRUE(std::equal(wpe.data.begin(), wpe.data.end(), w.at("wpe.weight").data.begin()));
    EXPECT_EQ(user_error([&] {
                  imported_checkpoint(source, sunk_tokens(1e3), "hf", {"model.context=9"});
              }).key(),
              "model.context");
    EXPECT_EQ(user_error([&] {
                  imported_checkpoint(source, sunk_tokens(1e3), "hf", {"model.layers=3"});
              }).key(),
              "model.layers");
}

TEST(ImportHfGpt2, ExportThenImportIsBitIdentical) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    const auto w = random_weights(m, 4);
    write_hf(dir / "hf", m, w);
    auto backend = make_backend("cpu");
    const Checkpoint first = imported_checkpoint(read_hf_gpt2(dir / "hf"), sunk_tokens(1e3), "hf");
    write_checkpoint(dir / "a.safetensors", first, *backend);
    write_hf_gpt2(dir / "exported", read_checkpoint(dir / "a.safetensors"));

    // the exported folder holds what transformers wrote, tensor for tensor, bit for bit
    const SafetensorsFile original = read_safetensors(dir / "hf" / "model.safetensors");
    const SafetensorsFile exported = read_safetensors(dir / "exported" / "model.safetensors");
    ASSERT_EQ(exported.tensors.size(), original.tensors.size());
    for (const auto& [name, t] : original.tensors) {
        ASSERT_TRUE(exported.tensors.count(name)) << name;
        EXPECT_EQ(exported.tensors.at(name).shape, t.shape) << name;
        EXPECT_EQ(exported.tensors.at(name).data, t.data) << name;
    }
    std::ifstream config_in(dir / "exported" / "config.json");
    const auto config = nlohmann::json::parse(config_in);
    EXPECT_EQ(config["vocab_size"], 67);
    EXPECT_EQ(config["n_layer"], 2);
    EXPECT_EQ(config["architectures"][0], "GPT2LMHeadModel");

    // and imports back to the same checkpoint tensors
    const Checkpoint second =
        imported_checkpoint(read_hf_gpt2(dir / "exported"), sunk_tokens(1e3), "exported");
    ASSERT_EQ(second.file.order, first.file.order);
    for (const auto& name : first.file.order) {
        EXPECT_EQ(second.file.tensors.at(name).data, first.file.tensors.at(name).data) << name;
    }
}

TEST(ImportHfGpt2, MoeCheckpointsAreNotExported) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    write_hf(dir / "hf", m, random_weights(m, 5));
    auto backend = make_backend("cpu");
    const Checkpoint dense = imported_checkpoint(read_hf_gpt2(dir / "hf"), sunk_tokens(1e3), "hf");
    ContinuationOptions options;
    options.upcycle.moe.experts = 4;
    Checkpoint moe = make_continuation(Method::Upcycle, options, dense, *backend);
    moe.path = "moe.safetensors";
    const auto e = user_error([&] { write_hf_gpt2(dir / "out", moe); });
    EXPECT_EQ(e.file(), "moe.safetensors");
    EXPECT_EQ(e.key(), "model.moe.experts");
    EXPECT_NE(std::string(e.what()).find("no GPT2LMHeadModel form"), std::string::npos);
}

TEST(ImportHfGpt2, BadFilesNameTheFileAndTheTensorOrKey) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    const auto w = random_weights(m, 6);
    const auto weights = [&](const char* name) {
        return (dir / name / "model.safetensors").string();
    };
    const auto config = [&](const char* name) { return (dir / name / "config.json").string(); };

    write_hf(dir / "missing", m, w, hf([](HfOptions& o) { o.skip = "h.1.mlp.c_fc.bias"; }));
    auto e = user_error([&] { read_hf_gpt2(dir / "missing"); });
    EXPECT_EQ(e.file(), weights("missing"));
    EXPECT_EQ(e.key(), "transformer.h.1.mlp.c_fc.bias");
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);

    write_hf(dir / "shape", m, w, hf([](HfOptions& o) { o.misshape = "h.0.attn.c_attn.weight"; }));
    e = user_error([&] { read_hf_gpt2(dir / "shape"); });
    EXPECT_EQ(e.key(), "transformer.h.0.attn.c_attn.weight");
    EXPECT_NE(std::string(e.what()).find("expected shape [16, 48], found [15, 48]"),
              std::string::npos)
        << e.what();

    write_hf(dir / "untied", m, w, hf([](HfOptions& o) { o.lm_head = true; }));
    {  // lm_head different from wte
        auto file = read_safetensors(dir / "untied" / "model.safetensors");
        file.tensors.at("lm_head.weight").data[3] += 1.0f;
        std::vector<TensorView> views;
        for (const auto& name : file.order)
            views.push_back({name, file.tensors.at(name).shape, file.tensors.at(name).data.data()});
        write_safetensors(dir / "untied" / "model.safetensors", views, {});
    }
    e = user_error([&] { read_hf_gpt2(dir / "untied"); });
    EXPECT_EQ(e.key(), "lm_head.weight");

    write_hf(dir / "act", m, w,
             hf([](HfOptions& o) { o.config_changes["activation_function"] = "relu"; }));
    e = user_error([&] { read_hf_gpt2(dir / "act"); });
    EXPECT_EQ(e.file(), config("act"));
    EXPECT_EQ(e.key(), "activation_function");

    write_hf(dir / "nolayers", m, w);
    {
        std::ifstream in(dir / "nolayers" / "config.json");
        auto j = nlohmann::json::parse(in);
        j.erase("n_layer");
        std::ofstream(dir / "nolayers" / "config.json") << j.dump();
    }
    e = user_error([&] { read_hf_gpt2(dir / "nolayers"); });
    EXPECT_EQ(e.key(), "n_layer");

    write_hf(dir / "wrongvocab", m, w,
             hf([](HfOptions& o) { o.config_changes["vocab_size"] = 50257; }));
    e = user_error([&] { read_hf_gpt2(dir / "wrongvocab"); });
    EXPECT_EQ(e.key(), "transformer.wte.weight");

    write_hf(dir / "short", m, w);
    std::filesystem::resize_file(
        dir / "short" / "model.safetensors",
        std::filesystem::file_size(dir / "short" / "model.safetensors") - 10);
    e = user_error([&] { read_hf_gpt2(dir / "short"); });
    EXPECT_EQ(e.file(), weights("short"));

    std::filesystem::create_directories(dir / "empty");
    e = user_error([&] { read_hf_gpt2(dir / "empty"); });
    EXPECT_EQ(e.file(), config("empty"));
}

TEST(ImportLlmcGpt2, EqualsTheHfImportOfTheSameWeights) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    auto w = random_weights(m, 7);
    write_hf(dir / "hf", m, w);
    const ImportedGpt hf = read_hf_gpt2(dir / "hf");
    for (const int version : {3, 1}) {
        const auto path = dir / ("v" + std::to_string(version) + ".bin");
        write_llmc(path, m, w, version, /*Vp=*/128);
        const ImportedGpt llmc = read_llmc_gpt2(path);
        EXPECT_EQ(describe_model(llmc.model), describe_model(hf.model)) << version;
        expect_weights_equal(llmc.weights, hf.weights);  // padding rows dropped: V = 67 rows
    }
    round_to_bf16(w);
    write_llmc(dir / "bf16.bin", m, w, 5, 128);
    expect_weights_equal(read_llmc_gpt2(dir / "bf16.bin").weights, w);
}

TEST(ImportLlmcGpt2, BadFilesNameTheFileAndTheField) {
    TempDir dir;
    const ModelConfig m = tiny_gpt2();
    const auto w = random_weights(m, 8);
    write_llmc(dir / "magic.bin", m, w, 3, 128, /*magic=*/20240520);
    auto e = user_error([&] { read_llmc_gpt2(dir / "magic.bin"); });
    EXPECT_EQ(e.file(), (dir / "magic.bin").string());
    EXPECT_EQ(e.key(), "header[0] (magic)");
    EXPECT_NE(std::string(e.what()).find("token shard"), std::string::npos);

    write_llmc(dir / "version.bin", m, w, 2, 128);
    EXPECT_EQ(user_error([&] { read_llmc_gpt2(dir / "version.bin"); }).key(),
              "header[1] (version)");

    write_llmc(dir / "cut.bin", m, w, 3, 128);
    // cut inside fcprojw: the 64 floats after it (fcprojb [2,16], lnfw, lnfb) and 100 of its own
    const auto full = std::filesystem::file_size(dir / "cut.bin");
    std::filesystem::resize_file(dir / "cut.bin", full - 4 * (64 + 100));
    e = user_error([&] { read_llmc_gpt2(dir / "cut.bin"); });
    EXPECT_EQ(e.key(), "fcprojw");
    EXPECT_NE(std::string(e.what()).find("needs"), std::string::npos);

    write_llmc(dir / "long.bin", m, w, 3, 128);
    { std::ofstream(dir / "long.bin", std::ios::app) << "extra"; }
    EXPECT_NE(
        std::string(user_error([&] { read_llmc_gpt2(dir / "long.bin"); }).what()).find("longer"),
        std::string::npos);

    write_llmc(dir / "padding.bin", m, w, 3, /*Vp=*/60);  // Vp < V
    EXPECT_EQ(user_error([&] { read_llmc_gpt2(dir / "padding.bin"); }).key(),
              "header[7] (padded_vocab_size)");

    { std::ofstream(dir / "tiny.bin") << "GPT"; }
    EXPECT_EQ(user_error([&] { read_llmc_gpt2(dir / "tiny.bin"); }).key(), "header");
}

}  // namespace
}  // namespace upcycle
