#pragma once
// Tokenized corpora: token ids (uint16, e.g. GPT-2's 50,257) in the two formats the ecosystem
// writes, read through read-only memory maps (the OS pages them in on demand: a 100M-token
// shard costs no heap).
//   llm.c shard (its dev/data scripts, write_datafile): a header of 256 little-endian int32 —
//     [0] magic 20240520, [1] version 1, [2] token count N — then N uint16 tokens; the file is
//     exactly 1024 + 2·N bytes.
//   nanoGPT (its data/*/prepare.py): train.bin / val.bin, the raw uint16 tokens, no header.
// A file whose first int32 is the magic is read as an llm.c shard (and must then be a valid
// one), any other as raw tokens. Raw GPT-2 tokens never start with the magic: its two uint16
// halves are 55272 and 308, and 55272 is past GPT-2's vocabulary.
//
// Windows follow the byte-text rules (core/data/text_batches.h), within one file at a time:
//   training: a window of T+1 tokens at a uniformly random start among all files' starts (one
//             draw of the data generator per window, as for text, so a resumed run draws the
//             same stream);
//   evaluation: windows of T+1 tokens every T tokens from each file's start, a final partial
//             window dropped; the files' windows in file order.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/rng.h"

namespace upcycle {

inline constexpr int32_t kLlmcShardMagic = 20240520;
inline constexpr int32_t kLlmcShardVersion = 1;
inline constexpr int32_t kLlmcLlama3ShardMagic = 20240801;  // uint32 tokens: refused
inline constexpr std::size_t kLlmcHeaderInts = 256;

enum class TokenFileFormat { LlmcShard, RawUint16 };

// One mapped file of tokens.
struct TokenFile {
    std::filesystem::path path;
    TokenFileFormat format = TokenFileFormat::RawUint16;
    MappedFile map;
    std::span<const uint16_t> tokens;  // [N]
};

// Opens one file of tokens, recognising its format as above. UserError naming the file for a
// bad llm.c header (version, a token count that disagrees with the file's length) or a raw
// file of an odd number of bytes.
TokenFile open_token_file(const std::filesystem::path& path);

// The files matching a glob pattern (glob(3): *, ?, [...]), sorted by name. UserError (file =
// source, key = the config key) when none match.
std::vector<std::filesystem::path> glob_token_files(const std::string& pattern,
                                                    const std::string& source,
                                                    const std::string& key);

// The token files of one split.
class TokenShards {
public:
    TokenShards() = default;
    explicit TokenShards(const std::vector<std::filesystem::path>& files);

    const std::vector<TokenFile>& files() const { return files_; }
    int64_t total_tokens() const;

    // UserError naming the first file holding a token id ≥ vocab_size: the id, its position
    // and the vocabulary. Reads every token once.
    void check_vocabulary(int vocab_size) const;

    // Training windows, starts drawn uniformly over every file's [0, N - T) (files shorter
    // than T + 1 tokens have none): inputs, targets [B·T].
    int64_t count_train_starts(int T) const;
    void sample_batch(int B, int T, Rng& rng, std::vector<int32_t>& inputs,
                      std::vector<int32_t>& targets) const;

    // Evaluation windows (count_eval_windows per file, in file order).
    int64_t count_eval_windows(int T) const;
    void fill_eval_windows(int T, const std::vector<int64_t>& windows, std::vector<int32_t>& inputs,
                           std::vector<int32_t>& targets) const;

    // "3 llm.c shards, 300,000,000 tokens (data/fineweb_val_000000.bin, …)"
    std::string describe() const;

private:
    std::vector<TokenFile> files_;
};

}  // namespace upcycle
