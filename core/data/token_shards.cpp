#include "core/data/token_shards.h"

#include <glob.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/data/text_batches.h"
#include "core/errors.h"

namespace upcycle {

// ---- one file -----------------------------------------------------------------------------------

TokenFile open_token_file(const std::filesystem::path& path) {
    TokenFile file{path, TokenFileFormat::RawUint16, MappedFile(path), {}};
    const auto bytes = file.map.bytes();
    const std::string name = path.string();
    constexpr std::size_t kHeaderBytes = kLlmcHeaderInts * sizeof(int32_t);
    int32_t first = 0;
    if (bytes.size() >= sizeof(first)) std::memcpy(&first, bytes.data(), sizeof(first));
    if (first == kLlmcShardMagic) {
        file.format = TokenFileFormat::LlmcShard;
        if (bytes.size() < kHeaderBytes) {
            throw UserError(name, "header",
                            fmt::format("starts with the llm.c shard magic {} but is {} bytes, "
                                        "shorter than the {}-byte header",
                                        kLlmcShardMagic, bytes.size(), kHeaderBytes));
        }
        int32_t header[3];
        std::memcpy(header, bytes.data(), sizeof(header));
        if (header[1] != kLlmcShardVersion) {
            throw UserError(name, "header[1] (version)",
                            fmt::format("expected llm.c shard version {} (uint16 GPT-2 tokens), "
                                        "found {}",
                                        kLlmcShardVersion, header[1]));
        }
        const uint64_t data_bytes = bytes.size() - kHeaderBytes;
        if (header[2] < 0 || static_cast<uint64_t>(header[2]) * 2 != data_bytes) {
            throw UserError(
                name, "header[2] (token count)",
                fmt::format("the header counts {} tokens ({} bytes), but the file "
                            "holds {} bytes after the header (truncated?)",
                            header[2], static_cast<int64_t>(header[2]) * 2, data_bytes));
        }
        file.tokens = {reinterpret_cast<const uint16_t*>(bytes.data() + kHeaderBytes),
                       static_cast<std::size_t>(header[2])};
    } else if (first == kLlmcLlama3ShardMagic) {
        throw UserError(name, "header[0] (magic)",
                        fmt::format("is an llm.c Llama-3 shard (magic {}, uint32 tokens); only "
                                    "GPT-2 shards (magic {}, uint16 tokens) and raw uint16 files "
                                    "are read",
                                    kLlmcLlama3ShardMagic, kLlmcShardMagic));
    } else {
        if (bytes.size() % sizeof(uint16_t) != 0) {
            throw UserError(name, "",
                            fmt::format("a raw uint16 token file must have an even length, found "
                                        "{} bytes (not an llm.c shard either: no magic {})",
                                        bytes.size(), kLlmcShardMagic));
        }
        file.tokens = {reinterpret_cast<const uint16_t*>(bytes.data()),
                       bytes.size() / sizeof(uint16_t)};
    }
    return file;
}

std::vector<std::filesystem::path> glob_token_files(const std::string& pattern,
                                                    const std::string& source,
                                                    const std::string& key) {
    glob_t found{};
    const int rc = ::glob(pattern.c_str(), 0, nullptr, &found);
    std::vector<std::filesystem::path> files;
    if (rc == 0) {
        for (std::size_t i = 0; i < found.gl_pathc; ++i) files.emplace_back(found.gl_pathv[i]);
    }
    ::globfree(&found);
    if (rc != 0 && rc != GLOB_NOMATCH) {
        throw UserError(source, key, "cannot read the folders of '" + pattern + "'");
    }
    if (files.empty()) {
        throw UserError(source, key,
                        "no file matches '" + pattern +
                            "' (relative patterns are relative to the working directory)");
    }
    std::sort(files.begin(), files.end());
    return files;
}

// ---- a split ------------------------------------------------------------------------------------

TokenShards::TokenShards(const std::vector<std::filesystem::path>& files) {
    for (const auto& path : files) files_.push_back(open_token_file(path));
}

int64_t TokenShards::total_tokens() const {
    int64_t n = 0;
    for (const auto& f : files_) n += static_cast<int64_t>(f.tokens.size());
    return n;
}

void TokenShards::check_vocabulary(int vocab_size) const {
    for (const auto& f : files_) {
        const auto n = static_cast<int64_t>(f.tokens.size());
        uint16_t largest = 0;
#pragma omp parallel for reduction(max : largest) schedule(static)
        for (int64_t i = 0; i < n; ++i) largest = std::max(largest, f.tokens[i]);
        if (largest < vocab_size) continue;
        const auto at = std::find_if(f.tokens.begin(), f.tokens.end(),
                                     [&](uint16_t id) { return id >= vocab_size; });
        throw UserError(f.path.string(), "token",
                        fmt::format("token id {} at position {} is outside the model's "
                                    "vocabulary (model.vocab_size {}; largest id in the file {}): "
                                    "tokenized for another vocabulary?",
                                    *at, at - f.tokens.begin(), vocab_size, largest));
    }
}

namespace {
int64_t train_starts(std::size_t tokens, int T) {
    return tokens > static_cast<std::size_t>(T) ? static_cast<int64_t>(tokens) - T : 0;
}
}  // namespace

int64_t TokenShards::count_train_starts(int T) const {
    int64_t n = 0;
    for (const auto& f : files_) n += train_starts(f.tokens.size(), T);
    return n;
}

void TokenShards::sample_batch(int B, int T, Rng& rng, std::vector<int32_t>& inputs,
                               std::vector<int32_t>& targets) const {
    const int64_t starts = count_train_starts(T);
    UPCYCLE_ASSERT(starts > 0, "no token file holds a window");
    inputs.resize(static_cast<std::size_t>(B) * T);
    targets.resize(static_cast<std::size_t>(B) * T);
    for (int b = 0; b < B; ++b) {
        auto o = static_cast<int64_t>(rng.below(static_cast<uint64_t>(starts)));
        std::size_t f = 0;  // the file holding start o
        while (o >= train_starts(files_[f].tokens.size(), T)) {
            o -= train_starts(files_[f].tokens.size(), T);
            ++f;
        }
        const std::size_t row = static_cast<std::size_t>(b) * T;
        copy_window(files_[f].tokens, static_cast<std::size_t>(o), T, inputs.data() + row,
                    targets.data() + row);
    }
}

int64_t TokenShards::count_eval_windows(int T) const {
    int64_t n = 0;
    for (const auto& f : files_) n += upcycle::count_eval_windows(f.tokens.size(), T);
    return n;
}

void TokenShards::fill_eval_windows(int T, const std::vector<int64_t>& windows,
                                    std::vector<int32_t>& inputs,
                                    std::vector<int32_t>& targets) const {
    inputs.resize(windows.size() * T);
    targets.resize(windows.size() * T);
    for (std::size_t r = 0; r < windows.size(); ++r) {
        int64_t w = windows[r];
        std::size_t f = 0;  // the file holding window w
        while (f < files_.size() && w >= upcycle::count_eval_windows(files_[f].tokens.size(), T)) {
            w -= upcycle::count_eval_windows(files_[f].tokens.size(), T);
            ++f;
        }
        UPCYCLE_ASSERT(f < files_.size(), "evaluation window past the last token file");
        copy_window(files_[f].tokens, static_cast<std::size_t>(w) * T, T, inputs.data() + r * T,
                    targets.data() + r * T);
    }
}

std::string TokenShards::describe() const {
    if (files_.empty()) return "no token files";
    const bool llmc = files_.front().format == TokenFileFormat::LlmcShard;
    return fmt::format("{} {}{}, {} tokens ({}{})", files_.size(),
                       llmc ? "llm.c shard" : "raw uint16 file", files_.size() == 1 ? "" : "s",
                       total_tokens(), files_.front().path.string(),
                       files_.size() > 1 ? ", …" : "");
}

}  // namespace upcycle
