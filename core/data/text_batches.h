#pragma once
// Byte-token batches from a text. Token = byte value (0..255).
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/rng.h"

namespace upcycle {

struct TextCorpus;  // core/data/kjv.h

// The corpus a DataConfig names: the KJV (validation = whole books), or a text file /
// synthetic text whose last validation_fraction of bytes is held out. Throws UserError.
TextCorpus load_text_corpus(const DataConfig& data, const std::string& config_source);

// Training batch: B windows of T+1 bytes at uniformly random offsets drawn from rng.
// inputs[b·T + t] = text[o_b + t], targets[b·T + t] = text[o_b + t + 1].
void sample_text_batch(std::string_view text, int B, int T, Rng& rng,
                       std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

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
