#include "core/import/llmc_gpt2.h"

#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/mapped_file.h"

namespace upcycle {

namespace {

constexpr std::size_t kHeaderInts = 256;
constexpr std::size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);

// One of llm.c's parameter tensors: all L layers' copies in one array.
struct LlmcTensor {
    const char* name;            // llm.c's name (ParameterTensors' field)
    std::vector<int64_t> shape;  // [L, out, in] or [L, n] per layer; [n] or [rows, C] once
    std::string ours;            // our name; "{i}" for the layer
};

std::vector<LlmcTensor> llmc_tensors(int64_t Vp, int64_t maxT, int64_t L, int64_t C) {
    return {
        {"wte", {Vp, C}, "wte.weight"},
        {"wpe", {maxT, C}, "wpe.weight"},
        {"ln1w", {L, C}, "blocks.{i}.ln1.weight"},
        {"ln1b", {L, C}, "blocks.{i}.ln1.bias"},
        {"qkvw", {L, 3 * C, C}, "blocks.{i}.attn.qkv.weight"},
        {"qkvb", {L, 3 * C}, "blocks.{i}.attn.qkv.bias"},
        {"attprojw", {L, C, C}, "blocks.{i}.attn.proj.weight"},
        {"attprojb", {L, C}, "blocks.{i}.attn.proj.bias"},
        {"ln2w", {L, C}, "blocks.{i}.ln2.weight"},
        {"ln2b", {L, C}, "blocks.{i}.ln2.bias"},
        {"fcw", {L, 4 * C, C}, "blocks.{i}.mlp.fc.weight"},
        {"fcb", {L, 4 * C}, "blocks.{i}.mlp.fc.bias"},
        {"fcprojw", {L, C, 4 * C}, "blocks.{i}.mlp.proj.weight"},
        {"fcprojb", {L, C}, "blocks.{i}.mlp.proj.bias"},
        {"lnfw", {C}, "lnf.weight"},
        {"lnfb", {C}, "lnf.bias"},
    };
}

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
}

float bf16_bits_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

}  // namespace

ImportedGpt read_llmc_gpt2(const std::filesystem::path& path) {
    const std::string file = path.string();
    const MappedFile map(path);
    const auto bytes = map.bytes();
    if (bytes.size() < kHeaderBytes) {
        throw UserError(file, "header",
                        fmt::format("{} bytes: shorter than llm.c's {}-byte header", bytes.size(),
                                    kHeaderBytes));
    }
    int32_t h[kHeaderInts];
    std::memcpy(h, bytes.data(), kHeaderBytes);
    if (h[0] != kLlmcModelMagic) {
        throw UserError(
            file, "header[0] (magic)",
            fmt::format("expected llm.c's GPT-2 model magic {}, found {} (not a "
                        "gpt2_*.bin checkpoint{})",
                        kLlmcModelMagic, h[0], h[0] == 20240520 ? "; this is a token shard" : ""));
    }
    const int32_t version = h[1];
    if (version != 1 && version != 3 && version != 5) {
        throw UserError(file, "header[1] (version)",
                        fmt::format("expected 1 or 3 (fp32) or 5 (bf16), found {}", version));
    }
    const auto field = [&](int index, const char* what) {
        if (h[index] <= 0) {
            throw UserError(file, fmt::format("header[{}] ({})", index, what),
                            fmt::format("expected a positive integer, found {}", h[index]));
        }
        return static_cast<int64_t>(h[index]);
    };
    const int64_t maxT = field(2, "maxT"), V = field(3, "vocab_size"), L = field(4, "num_layers"),
                  H = field(5, "num_heads"), C = field(6, "channels");
    const int64_t Vp = version == 1 ? V : field(7, "padded_vocab_size");
    if (Vp < V) {
        throw UserError(file, "header[7] (padded_vocab_size)",
                        fmt::format("expected at least vocab_size {}, found {}", V, Vp));
    }
    if (C % H != 0) {
        throw UserError(file, "header[5] (num_heads)",
                        fmt::format("channels ({}) must be divisible by heads ({})", C, H));
    }
    if (L > (1 << 16) || C > (1 << 20) || maxT > (1 << 24) || Vp > (1 << 24)) {
        throw UserError(file, "header", "sizes beyond any GPT-2 (corrupt header?)");
    }
    const std::size_t element = version == 5 ? 2 : 4;

    ImportedGpt out;
    out.format = "llmc_gpt2";
    out.weights_file = path;
    out.model.arch = Arch::Gpt;
    out.model.vocab_size = static_cast<int>(V);
    out.model.context = static_cast<int>(maxT);
    out.model.channels = static_cast<int>(C);
    out.model.layers = static_cast<int>(L);
    out.model.heads = static_cast<int>(H);

    const auto tensors = llmc_tensors(Vp, maxT, L, C);
    uint64_t expected_bytes = kHeaderBytes;
    for (const auto& t : tensors) expected_bytes += static_cast<uint64_t>(numel(t.shape)) * element;
    if (bytes.size() != expected_bytes) {
        // name the first tensor the file does not hold whole
        uint64_t offset = kHeaderBytes;
        std::string cut = "(none: the file is longer than the parameters)";
        for (const auto& t : tensors) {
            offset += static_cast<uint64_t>(numel(t.shape)) * element;
            if (offset > bytes.size()) {
                cut = t.name;
                break;
            }
        }
        throw UserError(file, cut,
                        fmt::format("the header (version {}, V {}, Vp {}, maxT {}, L {}, C {}) "
                                    "needs {} bytes, the file has {}",
                                    version, V, Vp, maxT, L, C, expected_bytes, bytes.size()));
    }

    const std::byte* p = bytes.data() + kHeaderBytes;
    const auto read = [&](int64_t n) {  // the next n elements as fp32
        std::vector<float> values(static_cast<std::size_t>(n));
        if (element == 4) {
            std::memcpy(values.data(), p, values.size() * 4);
        } else {
            for (std::size_t i = 0; i < values.size(); ++i) {
                uint16_t b;
                std::memcpy(&b, p + 2 * i, 2);
                values[i] = bf16_bits_to_float(b);
            }
        }
        p += static_cast<std::size_t>(n) * element;
        return values;
    };
    for (const auto& t : tensors) {
        const bool per_layer = t.ours.find("{i}") != std::string::npos;
        if (!per_layer) {
            std::vector<int64_t> shape = t.shape;
            std::vector<float> values = read(numel(shape));
            if (std::string(t.name) == "wte") {
                shape[0] = V;  // drop the padding rows
                values.resize(static_cast<std::size_t>(V * C));
            }
            out.weights[t.ours] = HostTensor{shape, std::move(values)};
            continue;
        }
        const std::vector<int64_t> layer_shape(t.shape.begin() + 1, t.shape.end());
        for (int64_t i = 0; i < L; ++i) {
            std::string name = t.ours;
            name.replace(name.find("{i}"), 3, std::to_string(i));
            out.weights[name] = HostTensor{layer_shape, read(numel(layer_shape))};
        }
    }
    return out;
}

}  // namespace upcycle
