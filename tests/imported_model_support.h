#pragma once
// Helpers for tests of imported models and token corpora: llm.c token shards and a random
// dense GPT imported with a declared sunk cost, written as a native checkpoint.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/checkpoint.h"
#include "core/data/token_shards.h"
#include "core/import/imported_gpt.h"
#include "core/model/model.h"
#include "core/model/parameters.h"
#include "kernels/backend_factory.h"

namespace upcycle::testing {

// An llm.c shard of n token ids below V: a repeating pattern with 1 in 4 tokens random, so a
// model learns something in a few steps.
inline void write_token_shard(const std::filesystem::path& path, int n, int V, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> header(kLlmcHeaderInts, 0);
    header[0] = kLlmcShardMagic;
    header[1] = kLlmcShardVersion;
    header[2] = n;
    std::vector<uint16_t> tokens(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        tokens[i] = static_cast<uint16_t>(rng.below(4) == 0 ? rng.below(V) : (i * 7) % V);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), 4 * kLlmcHeaderInts);
    out.write(reinterpret_cast<const char*>(tokens.data()), 2 * static_cast<std::size_t>(n));
}

// A dense GPT of shape m with weights from init_parameters(seed), imported with `sunk` and
// written to `path` (the import record hashes `path`'s sibling "<name>.source").
inline void write_imported_checkpoint(const std::filesystem::path& path, const ModelConfig& m,
                                      const SunkCost& sunk, uint64_t seed = 3) {
    ImportedGpt source;
    source.model = m;
    source.format = "hf_gpt2";
    source.weights_file = path.string() + ".source";
    std::ofstream(source.weights_file) << "the source's weights file, seed " << seed;
    const auto layout = parameter_layout(m);
    const auto values = init_parameters(layout, m.layers, seed);
    for (const auto& info : layout) {
        const auto begin = values.begin() + static_cast<std::ptrdiff_t>(info.offset);
        source.weights[info.name] =
            HostTensor{info.shape, {begin, begin + static_cast<std::ptrdiff_t>(info.numel)}};
    }
    const Checkpoint ckpt = imported_checkpoint(source, sunk, path.stem().string());
    auto backend = make_backend("cpu");
    write_checkpoint(path, ckpt, *backend);
}

}  // namespace upcycle::testing
