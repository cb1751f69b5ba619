#include "core/import/hf_gpt2.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/mapped_file.h"
#include "core/model/model.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace upcycle {

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kPrefix = "transformer.";  // GPT2LMHeadModel's name for its GPT2Model
constexpr const char* kLmHead = "lm_head.weight";
constexpr double kLayerNormEps = 1e-5;  // kernels/cpu/layernorm.cpp

// One tensor of both layouts; `theirs` without the "transformer." prefix.
struct TensorName {
    std::string ours;
    std::string theirs;
    bool transposed;  // a Conv1D weight: theirs [in, out], ours [out, in]
};

std::vector<TensorName> tensor_names(int layers) {
    std::vector<TensorName> names = {{"wte.weight", "wte.weight", false},
                                     {"wpe.weight", "wpe.weight", false}};
    for (int i = 0; i < layers; ++i) {
        const std::string o = "blocks." + std::to_string(i) + ".";
        const std::string t = "h." + std::to_string(i) + ".";
        for (const char* p : {"weight", "bias"}) {
            names.push_back({o + "ln1." + p, t + "ln_1." + p, false});
            names.push_back({o + "ln2." + p, t + "ln_2." + p, false});
        }
        names.push_back({o + "attn.qkv.weight", t + "attn.c_attn.weight", true});
        names.push_back({o + "attn.qkv.bias", t + "attn.c_attn.bias", false});
        names.push_back({o + "attn.proj.weight", t + "attn.c_proj.weight", true});
        names.push_back({o + "attn.proj.bias", t + "attn.c_proj.bias", false});
        names.push_back({o + "mlp.fc.weight", t + "mlp.c_fc.weight", true});
        names.push_back({o + "mlp.fc.bias", t + "mlp.c_fc.bias", false});
        names.push_back({o + "mlp.proj.weight", t + "mlp.c_proj.weight", true});
        names.push_back({o + "mlp.proj.bias", t + "mlp.c_proj.bias", false});
    }
    names.push_back({"lnf.weight", "ln_f.weight", false});
    names.push_back({"lnf.bias", "ln_f.bias", false});
    return names;
}

std::vector<int64_t> reversed(const std::vector<int64_t>& shape) {
    return {shape.rbegin(), shape.rend()};
}

// [R, K] row-major → [K, R]
std::vector<float> transpose(const std::vector<float>& in, int64_t rows, int64_t cols) {
    std::vector<float> out(in.size());
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
    return out;
}

float half_to_float(uint16_t h) {
    const bool negative = (h & 0x8000u) != 0;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24, exact in fp32
        const float value = std::ldexp(static_cast<float>(mantissa), -24);
        return negative ? -value : value;
    }
    if (exponent == 0x1f)
        bits = 0x7f800000u | (mantissa << 13);  // inf, nan
    else
        bits = ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 → 127
    if (negative) bits |= 0x80000000u;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

float bf16_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

// The tensor's elements as fp32 (F32, F16 or BF16 in the file).
std::vector<float> read_as_float(std::span<const std::byte> data, const SafetensorsEntry& e,
                                 const std::filesystem::path& file, const std::string& name) {
    const std::byte* p = data.data() + e.begin;
    const std::size_t bytes = e.end - e.begin;
    std::vector<float> out;
    if (e.dtype == "F32") {
        out.resize(bytes / 4);
        std::memcpy(out.data(), p, bytes);
    } else if (e.dtype == "F16" || e.dtype == "BF16") {
        out.resize(bytes / 2);
        const bool half = e.dtype == "F16";
        for (std::size_t i = 0; i < out.size(); ++i) {
            uint16_t v;
            std::memcpy(&v, p + 2 * i, 2);
            out[i] = half ? half_to_float(v) : bf16_to_float(v);
        }
    } else {
        throw UserError(file.string(), name,
                        "dtype is " + e.dtype + "; expected F32, F16 or BF16 weights");
    }
    return out;
}

const nlohmann::json* find(const nlohmann::json& config, const char* key) {
    const auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
}

ModelConfig read_config(const std::filesystem::path& file) {
    std::ifstream in(file);
    if (!in) {
        throw UserError(file.string(), "",
                        "cannot open it (a Hugging Face GPT-2 folder holds config.json and "
                        "model.safetensors)");
    }
    nlohmann::json config;
    try {
        config = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw UserError(file.string(), "", std::string("not valid JSON: ") + e.what());
    }
    if (!config.is_object()) throw UserError(file.string(), "", "expected a JSON object");
    const std::string name = file.string();
    const auto positive = [&](const char* key, const char* fallback = nullptr) {
        const nlohmann::json* value = find(config, key);
        if (!value && fallback) value = find(config, fallback);
        if (!value) throw UserError(name, key, "missing: a GPT-2 config.json states it");
        if (!value->is_number_integer() || value->get<int64_t>() <= 0 ||
            value->get<int64_t>() > (int64_t{1} << 30)) {
            throw UserError(name, key, "expected a positive integer, found " + value->dump());
        }
        return static_cast<int>(value->get<int64_t>());
    };
    const auto expect = [&](const char* key, const nlohmann::json& wanted, const std::string& why) {
        const nlohmann::json* value = find(config, key);
        if (value && *value != wanted) {
            throw UserError(name, key,
                            "expected " + wanted.dump() + ", found " + value->dump() + ": " + why);
        }
    };
    expect("model_type", "gpt2", "only GPT-2 models are imported");
    if (const auto* act = find(config, "activation_function")) {
        if (*act != "gelu_new" && *act != "gelu_pytorch_tanh") {
            throw UserError(
                name, "activation_function",
                "expected \"gelu_new\" (the tanh GELU our GPT computes), found " + act->dump());
        }
    }
    if (const auto* eps = find(config, "layer_norm_epsilon")) {
        if (!eps->is_number() || std::abs(eps->get<double>() - kLayerNormEps) > 1e-12) {
            throw UserError(name, "layer_norm_epsilon",
                            "expected 1e-05 (our LayerNorm's), found " + eps->dump());
        }
    }
    expect("scale_attn_weights", true, "our attention scales scores by 1/sqrt(head size)");
    expect("scale_attn_by_inverse_layer_idx", false, "our attention does not");
    expect("add_cross_attention", false, "a decoder-only GPT has no cross-attention");
    expect("tie_word_embeddings", true, "our output head is the token embedding");

    ModelConfig model;
    model.arch = Arch::Gpt;
    model.vocab_size = positive("vocab_size");
    model.context = positive("n_positions", "n_ctx");
    model.channels = positive("n_embd");
    model.layers = positive("n_layer");
    model.heads = positive("n_head");
    if (model.channels % model.heads != 0) {
        throw UserError(name, "n_head",
                        fmt::format("n_embd ({}) must be divisible by n_head ({})", model.channels,
                                    model.heads));
    }
    if (const auto* inner = find(config, "n_inner")) {
        if (*inner != 4 * model.channels) {
            throw UserError(name, "n_inner",
                            fmt::format("expected null or 4·n_embd = {} (our MLP width), found {}",
                                        4 * model.channels, inner->dump()));
        }
    }
    return model;
}

// h.{i}.attn.bias / h.{i}.attn.masked_bias: the causal mask, a buffer, not a parameter.
bool is_mask_buffer(const std::string& name) {
    static const std::regex mask(R"(h\.[0-9]+\.attn\.(bias|masked_bias))");
    return std::regex_match(name, mask);
}

std::string join_first(const std::vector<std::string>& items, std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < items.size() && i < n; ++i) out += (i ? ", " : "") + items[i];
    if (items.size() > n) out += fmt::format(", … ({} more)", items.size() - n);
    return out;
}

}  // namespace

ImportedGpt read_hf_gpt2(const std::filesystem::path& dir) {
    if (!std::filesystem::is_directory(dir)) {
        throw UserError(dir.string(), "",
                        "expected a Hugging Face model folder (config.json and model.safetensors)");
    }
    ImportedGpt out;
    out.format = "hf_gpt2";
    out.model = read_config(dir / kConfigFile);
    out.weights_file = dir / kWeightsFile;
    const auto& path = out.weights_file;
    const std::string file = path.string();
    if (!std::filesystem::exists(path)) {
        throw UserError(file, "",
                        "missing (only safetensors weights are read; transformers writes them "
                        "with save_pretrained(..., safe_serialization=True))");
    }
    // validates the header and that the file holds every tensor's bytes
    const SafetensorsHeader header = read_safetensors_header(path);
    const MappedFile map(path);
    uint64_t header_bytes = 0;
    std::memcpy(&header_bytes, map.bytes().data(), sizeof(header_bytes));
    const auto data = map.bytes().subspan(sizeof(header_bytes) + header_bytes);

    std::map<std::string, const SafetensorsEntry*> entries;
    for (const auto& e : header.entries) entries[e.name] = &e;
    // GPT2LMHeadModel files prefix "transformer."; the original gpt2 files do not
    const bool bare =
        entries.count("wte.weight") && !entries.count(kPrefix + std::string("wte.weight"));
    const std::string prefix = bare ? "" : kPrefix;

    const ModelConfig& m = out.model;
    std::map<std::string, std::vector<int64_t>> expected;  // ours
    for (const auto& info : parameter_layout(m)) expected[info.name] = info.shape;
    std::set<std::string> used;
    for (const auto& n : tensor_names(m.layers)) {
        const std::string theirs = prefix + n.theirs;
        const auto it = entries.find(theirs);
        if (it == entries.end()) {
            throw UserError(file, theirs,
                            fmt::format("missing: config.json describes {} layers of {} channels",
                                        m.layers, m.channels));
        }
        used.insert(theirs);
        const SafetensorsEntry& e = *it->second;
        const auto& ours = expected.at(n.ours);
        expect_shape(e.shape, n.transposed ? reversed(ours) : ours, path, theirs);
        HostTensor tensor{ours, read_as_float(data, e, path, theirs)};
        if (n.transposed) tensor.data = transpose(tensor.data, ours[1], ours[0]);
        out.weights[n.ours] = std::move(tensor);
    }
    std::vector<std::string> unexpected;
    for (const auto& e : header.entries) {
        if (used.count(e.name)) continue;
        const std::string unprefixed =
            e.name.rfind(kPrefix, 0) == 0 ? e.name.substr(std::strlen(kPrefix)) : e.name;
        if (is_mask_buffer(unprefixed)) continue;
        if (e.name == kLmHead) {
            // tied: the same matrix as wte, or the file is a model we do not compute
            const auto& wte = out.weights.at("wte.weight");
            expect_shape(e.shape, wte.shape, path, kLmHead);
            const auto head = read_as_float(data, e, path, kLmHead);
            if (std::memcmp(head.data(), wte.data.data(), head.size() * sizeof(float)) != 0) {
                throw UserError(file, kLmHead,
                                "differs from wte.weight: an untied output head is not "
                                "supported (our GPT's head is the token embedding)");
            }
            continue;
        }
        unexpected.push_back(e.name + " " + shape_string(e.shape));
    }
    if (!unexpected.empty()) {
        throw UserError(file, "",
                        fmt::format("{} tensor(s) that are not GPT-2's: {}", unexpected.size(),
                                    join_first(unexpected, 5)));
    }
    return out;
}

void write_hf_gpt2(const std::filesystem::path& dir, const Checkpoint& ckpt) {
    const ModelConfig& m = ckpt.config.model;
    const std::string name = ckpt.path.string();
    if (m.arch != Arch::Gpt) {
        throw UserError(
            name, "model.arch",
            "only a GPT exports as GPT2LMHeadModel; this checkpoint is a " + to_string(m.arch));
    }
    if (m.moe.experts > 0) {
        throw UserError(name, "model.moe.experts",
                        fmt::format("an MoE checkpoint ({}) has no GPT2LMHeadModel form: "
                                    "transformers' GPT-2 has dense MLPs only. Export a dense "
                                    "checkpoint (e.g. the parent before upcycling)",
                                    describe_model(m)));
    }
    std::filesystem::create_directories(dir);
    std::vector<std::vector<float>> storage;  // the transposed copies
    std::vector<TensorView> views;
    const auto names = tensor_names(m.layers);
    storage.reserve(names.size());
    for (const auto& n : names) {
        const HostTensor& t = ckpt.file.tensors.at(n.ours);
        if (n.transposed) {
            storage.push_back(transpose(t.data, t.shape[0], t.shape[1]));
            views.push_back({kPrefix + n.theirs, reversed(t.shape), storage.back().data()});
        } else {
            views.push_back({kPrefix + n.theirs, t.shape, t.data.data()});
        }
    }
    write_safetensors(dir / kWeightsFile, views, {});

    nlohmann::ordered_json config = {
        {"architectures", {"GPT2LMHeadModel"}},
        {"model_type", "gpt2"},
        {"vocab_size", m.vocab_size},
        {"n_positions", m.context},
        {"n_ctx", m.context},
        {"n_embd", m.channels},
        {"n_layer", m.layers},
        {"n_head", m.heads},
        {"n_inner", nullptr},
        {"activation_function", "gelu_new"},
        {"layer_norm_epsilon", kLayerNormEps},
        // trained here without dropout
        {"resid_pdrop", 0.0},
        {"embd_pdrop", 0.0},
        {"attn_pdrop", 0.0},
        {"initializer_range", 0.02},
        {"scale_attn_weights", true},
        {"scale_attn_by_inverse_layer_idx", false},
        {"reorder_and_upcast_attn", false},
        {"tie_word_embeddings", true},
        {"use_cache", true},
        {"torch_dtype", "float32"},
    };
    constexpr int kGpt2Vocabulary = 50257;  // GPT-2's tokenizer: <|endoftext|> is its last id
    if (m.vocab_size == kGpt2Vocabulary) {
        config["bos_token_id"] = kGpt2Vocabulary - 1;
        config["eos_token_id"] = kGpt2Vocabulary - 1;
    }
    const auto config_path = dir / kConfigFile;
    const auto tmp = dir / (std::string(".") + kConfigFile + ".tmp");
    {
        std::ofstream out(tmp);
        out << config.dump(2) << "\n";
        if (!out.flush()) {
            throw UserError(tmp.string(), "", "cannot write the config");
        }
    }
    std::filesystem::rename(tmp, config_path);
}

}  // namespace upcycle
