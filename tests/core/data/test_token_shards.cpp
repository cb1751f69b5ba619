// Token corpora in llm.c's shard format and nanoGPT's raw uint16 format: reading, window
// rules (the byte text's), sampling from the data stream, and the errors bad files give.
#include "core/data/token_shards.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/data/text_batches.h"
#include "core/errors.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;

// An llm.c shard as its dev/data scripts write it: 256 int32 header, then uint16 tokens.
// header_tokens overrides the count the header states (to forge a mismatch).
void write_llmc_shard(const std::filesystem::path& path, const std::vector<uint16_t>& tokens,
                      int32_t version = 1, int64_t header_tokens = -1) {
    std::vector<int32_t> header(256, 0);
    header[0] = kLlmcShardMagic;
    header[1] = version;
    header[2] = static_cast<int32_t>(header_tokens >= 0 ? header_tokens : tokens.size());
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), header.size() * 4);
    out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
}

void write_raw(const std::filesystem::path& path, const std::vector<uint16_t>& tokens) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
}

std::vector<uint16_t> counting(int n, int offset = 0) {
    std::vector<uint16_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = static_cast<uint16_t>(offset + i);
    return t;
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

TEST(TokenShards, ReadsBothFormats) {
    TempDir dir;
    write_llmc_shard(dir / "a.bin", counting(100));
    write_raw(dir / "train.bin", counting(50, 7));
    const auto a = open_token_file(dir / "a.bin");
    EXPECT_EQ(a.format, TokenFileFormat::LlmcShard);
    ASSERT_EQ(a.tokens.size(), 100u);
    EXPECT_EQ(a.tokens[0], 0);
    EXPECT_EQ(a.tokens[99], 99);
    const auto raw = open_token_file(dir / "train.bin");
    EXPECT_EQ(raw.format, TokenFileFormat::RawUint16);
    ASSERT_EQ(raw.tokens.size(), 50u);
    EXPECT_EQ(raw.tokens[0], 7);
}

TEST(TokenShards, GlobIsSortedAndSaysWhenNothingMatches) {
    TempDir dir;
    write_llmc_shard(dir / "s_002.bin", counting(10));
    write_llmc_shard(dir / "s_001.bin", counting(10));
    const auto files = glob_token_files((dir / "s_*.bin").string(), "cfg.yaml", "data.train_glob");
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[0].filename(), "s_001.bin");
    const auto e = user_error(
        [&] { glob_token_files((dir / "none_*.bin").string(), "cfg.yaml", "data.val_glob"); });
    EXPECT_EQ(e.file(), "cfg.yaml");
    EXPECT_EQ(e.key(), "data.val_glob");
    EXPECT_NE(std::string(e.what()).find("no file matches"), std::string::npos);
}

TEST(TokenShards, EvalWindowsFollowTheTextRulesFileByFile) {
    TempDir dir;
    // 21 tokens, T = 4: windows at 0, 4, 8, 12, 16 ((21 - 1) / 4 = 5); 9 tokens: 2 windows
    write_llmc_shard(dir / "v1.bin", counting(21));
    write_llmc_shard(dir / "v2.bin", counting(9, 1000));
    const TokenShards shards({dir / "v1.bin", dir / "v2.bin"});
    const int T = 4;
    EXPECT_EQ(shards.count_eval_windows(T), count_eval_windows(21, T) + count_eval_windows(9, T));
    EXPECT_EQ(shards.count_eval_windows(T), 7);
    std::vector<int32_t> inputs, targets;
    shards.fill_eval_windows(T, {4, 5, 6}, inputs, targets);
    // window 4: file 1 at 16; window 5: file 2 at 0; window 6: file 2 at 4
    EXPECT_EQ(inputs, (std::vector<int32_t>{16, 17, 18, 19, 1000, 1001, 1002, 1003, 1004, 1005,
                                            1006, 1007}));
    EXPECT_EQ(targets, (std::vector<int32_t>{17, 18, 19, 20, 1001, 1002, 1003, 1004, 1005, 1006,
                                             1007, 1008}));
}

TEST(TokenShards, TrainingWindowsStayInOneFileAndFollowTheDataStream) {
    TempDir dir;
    write_llmc_shard(dir / "t1.bin", counting(40));
    write_llmc_shard(dir / "t2.bin", counting(3, 5000));  // shorter than a window: never drawn
    write_raw(dir / "t3.bin", counting(30, 2000));
    const TokenShards shards({dir / "t1.bin", dir / "t2.bin", dir / "t3.bin"});
    const int T = 8;
    EXPECT_EQ(shards.count_train_starts(T), (40 - 8) + 0 + (30 - 8));
    Rng rng(5);
    std::vector<int32_t> inputs, targets;
    bool saw_first = false, saw_third = false;
    for (int i = 0; i < 50; ++i) {
        shards.sample_batch(4, T, rng, inputs, targets);
        for (int b = 0; b < 4; ++b) {
            const int32_t first = inputs[b * T];
            saw_first |= first < 40;
            saw_third |= first >= 2000;
            EXPECT_TRUE(first < 40 - T || (first >= 2000 && first < 2000 + 30 - T)) << first;
            for (int t = 0; t < T; ++t) {
                EXPECT_EQ(inputs[b * T + t], first + t);  // consecutive within one file
                EXPECT_EQ(targets[b * T + t], first + t + 1);
            }
        }
    }
    EXPECT_TRUE(saw_first && saw_third);
    // the stream is the generator's: the same state draws the same batches (resume)
    Rng a(9), b(9);
    std::vector<int32_t> ia, ta, ib, tb;
    shards.sample_batch(3, T, a, ia, ta);
    const Rng::State saved = a.state();
    shards.sample_batch(3, T, a, ia, ta);
    b.set_state(saved);
    shards.sample_batch(3, T, b, ib, tb);
    EXPECT_EQ(ia, ib);
    EXPECT_EQ(ta, tb);
}

TEST(TokenShards, TokenOutsideTheVocabularyNamesTheFile) {
    TempDir dir;
    auto tokens = counting(30);
    tokens[17] = 300;
    write_llmc_shard(dir / "bad.bin", tokens);
    const TokenShards shards({dir / "bad.bin"});
    shards.check_vocabulary(301);  // fits
    const auto e = user_error([&] { shards.check_vocabulary(256); });
    EXPECT_EQ(e.file(), (dir / "bad.bin").string());
    const std::string what = e.what();
    EXPECT_NE(what.find("token id 300 at position 17"), std::string::npos) << what;
    EXPECT_NE(what.find("model.vocab_size 256"), std::string::npos) << what;
}

TEST(TokenShards, BadFilesAreRefusedNamingFileAndField) {
    TempDir dir;
    write_llmc_shard(dir / "v2.bin", counting(10), /*version=*/2);
    auto e = user_error([&] { open_token_file(dir / "v2.bin"); });
    EXPECT_EQ(e.key(), "header[1] (version)");
    EXPECT_EQ(e.file(), (dir / "v2.bin").string());

    write_llmc_shard(dir / "cut.bin", counting(10), 1, /*header_tokens=*/20);
    e = user_error([&] { open_token_file(dir / "cut.bin"); });
    EXPECT_EQ(e.key(), "header[2] (token count)");
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);

    {  // the magic, then less than a header
        std::ofstream out(dir / "short.bin", std::ios::binary);
        out.write(reinterpret_cast<const char*>(&kLlmcShardMagic), 4);
        out.write("abcd", 4);
    }
    e = user_error([&] { open_token_file(dir / "short.bin"); });
    EXPECT_EQ(e.key(), "header");

    {  // llm.c's Llama-3 shard: uint32 tokens
        std::vector<int32_t> header(256, 0);
        header[0] = kLlmcLlama3ShardMagic;
        std::ofstream out(dir / "llama.bin", std::ios::binary);
        out.write(reinterpret_cast<const char*>(header.data()), 1024);
    }
    e = user_error([&] { open_token_file(dir / "llama.bin"); });
    EXPECT_EQ(e.key(), "header[0] (magic)");

    {  // a raw file of an odd length
        std::ofstream out(dir / "odd.bin", std::ios::binary);
        out.write("abc", 3);
    }
    e = user_error([&] { open_token_file(dir / "odd.bin"); });
    EXPECT_NE(std::string(e.what()).find("even length"), std::string::npos);

    e = user_error([&] { open_token_file(dir / "missing.bin"); });
    EXPECT_EQ(e.file(), (dir / "missing.bin").string());
}

}  // namespace
}  // namespace upcycle
