#pragma once
// Byte-token batches from a text. Token = byte value (0..255). The window rules here are
// also those of token-id corpora (core/data/token_shards.h), through copy_window.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/rng.h"

namespace upcycle {

struct TextCorpus;  // core/data/kjv.h

// The corpus a DataConfig names: the KJV (validation = whole books), or a text file /
// synthetic text whose last validation_fraction of bytes is held out. Throws UserError.
TextCorpus load_text_corpus(const DataConfig& data, const std::string& config_source);

// The token at position i of a sequence: a byte of a text, or a token id.
inline int32_t token_at(std::string_view text, std::size_t i) {
    return static_cast<unsigned char>(text[i]);
}
inline int32_t token_at(std::span<const uint16_t> tokens, std::size_t i) { return tokens[i]; }

// One window of T+1 tokens starting at o: inputs[t] = seq[o + t], targets[t] = seq[o + t + 1].
template <class Sequence>
void copy_window(const Sequence& seq, std::size_t o, int T, int32_t* inputs, int32_t* targets) {
    for (int t = 0; t < T; ++t) {
        inputs[t] = token_at(seq, o + static_cast<std::size_t>(t));
        targets[t] = token_at(seq, o + static_cast<std::size_t>(t) + 1);
    }
}

// Training batch: B windows of T+1 bytes at uniformly random offsets drawn from rng.
// inputs[b·T + t] = text[o_b + t], targets[b·T + t] = text[o_b + t + 1].
void sample_text_batch(std::string_view text, int B, int T, Rng& rng, std::vector<int32_t>& inputs,
                       std::vector<int32_t>& targets);

// Evaluation windows: windows of T+1 bytes taken every T bytes from the start; a final
// partial window is dropped. Window w covers bytes [w·T, w·T + T].
int64_t count_eval_windows(std::size_t text_bytes, int T);
// Fills rows for the given window indices (inputs/targets resized to indices.size()·T).
void fill_eval_windows(std::string_view text, int T, const std::vector<int64_t>& windows,
                       std::vector<int32_t>& inputs, std::vector<int32_t>& targets);
// max_windows evenly spaced window indices out of count (all of them if max_windows is 0 or
// at least count). Deterministic.
std::vector<int64_t> select_eval_windows(int64_t count, int64_t max_windows);

}  // namespace upcycle
