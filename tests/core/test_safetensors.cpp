// safetensors container: round trip, byte layout, hand-built files, and every rejection path.
#include "core/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "core/errors.h"
#include "core/rng.h"

#include "test_support.h"

namespace upcycle {
namespace {

namespace fs = std::filesystem;

using upcycle::testing::TempDir;

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    return s;
}

// A safetensors file assembled by hand: length field, header text, data bytes.
std::string hand_file(const std::string& header, const std::string& data) {
    return le64(header.size()) + header + data;
}

std::string floats_le(const std::vector<float>& v) {
    std::string s(v.size() * 4, '\0');
    for (std::size_t i = 0; i < v.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &v[i], 4);
        for (int b = 0; b < 4; ++b) s[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
    }
    return s;
}

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

struct Fixture {
    std::vector<float> a, b, c, scalar;
    std::vector<TensorView> views;
    Fixture() {
        Rng rng(7);
        a.resize(3 * 5);
        b.resize(7);
        c.resize(2 * 3 * 4);
        for (auto* v : {&a, &b, &c})
            for (auto& x : *v) x = rng.normal();
        // bit patterns that a lossy path would change: -0, denormal, inf, NaN payload
        a[0] = -0.0f;
        a[1] = 1e-42f;
        a[2] = std::numeric_limits<float>::infinity();
        uint32_t nan_bits = 0x7fc01234;
        std::memcpy(&a[3], &nan_bits, 4);
        scalar = {42.5f};
        // deliberately not alphabetical, to check the order survives
        views = {{"z.weight", {3, 5}, a.data()},
                 {"b.bias", {7}, b.data()},
                 {"m.blocks.0", {2, 3, 4}, c.data()},
                 {"empty", {0, 4}, nullptr},
                 {"scalar", {}, scalar.data()}};
    }
};

TEST(Safetensors, RoundTripIsBitExactWithOrderAndMetadata) {
    TempDir dir;
    const fs::path file = dir.path() / "ckpt.safetensors";
    Fixture fx;
    const std::map<std::string, std::string> meta = {{"config", R"({"n_layer": 2})"},
                                                     {"step", "123"}};
    write_safetensors(file, fx.views, meta);

    const SafetensorsFile read = read_safetensors(file);
    ASSERT_EQ(read.order.size(), fx.views.size());
    for (std::size_t i = 0; i < fx.views.size(); ++i) {
        const auto& v = fx.views[i];
        EXPECT_EQ(read.order[i], v.name);
        const auto& t = read.tensors.at(v.name);
        EXPECT_EQ(t.shape, v.shape) << v.name;
        int64_t n = 1;
        for (auto d : v.shape) n *= d;
        ASSERT_EQ(static_cast<int64_t>(t.data.size()), n) << v.name;
        if (n) {
            EXPECT_EQ(std::memcmp(t.data.data(), v.data, n * sizeof(float)), 0) << v.name;
        }
    }
    auto expected_meta = meta;
    expected_meta["format"] = "pt";
    EXPECT_EQ(read.metadata, expected_meta);  // the crc key is stripped

    const SafetensorsHeader header = read_safetensors_header(file);
    EXPECT_EQ(header.metadata.at("format"), "pt");
    EXPECT_EQ(header.metadata.at(kSafetensorsCrcKey).size(), 8u);
    EXPECT_EQ(header.data_bytes, (15 + 7 + 24 + 0 + 1) * 4u);
    ASSERT_EQ(header.entries.size(), fx.views.size());
    EXPECT_EQ(header.entries[0].name, "z.weight");
    EXPECT_EQ(header.entries[0].dtype, "F32");
}

TEST(Safetensors, HeaderIsAlignedJsonWithCorrectOffsets) {
    TempDir dir;
    const fs::path file = dir.path() / "layout.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {{"note", "hello"}});

    const std::string bytes = read_bytes(file);
    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    EXPECT_EQ(n % 8, 0u);
    EXPECT_EQ((8 + n) % 8, 0u);
    ASSERT_LE(8 + n, bytes.size());
    const std::string header_text = bytes.substr(8, n);
    EXPECT_EQ(header_text.front(), '{');
    const auto j = nlohmann::json::parse(header_text);  // trailing spaces are JSON whitespace
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["__metadata__"]["note"], "hello");
    EXPECT_EQ(j["__metadata__"]["format"], "pt");

    const std::string data = bytes.substr(8 + n);
    uint64_t offset = 0;
    for (const auto& v : fx.views) {
        const auto& e = j.at(v.name);
        EXPECT_EQ(e["dtype"], "F32");
        EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), v.shape);
        int64_t count = 1;
        for (auto d : v.shape) count *= d;
        const uint64_t size = static_cast<uint64_t>(count) * 4;
        EXPECT_EQ(e["data_offsets"][0].get<uint64_t>(), offset) << v.name;
        EXPECT_EQ(e["data_offsets"][1].get<uint64_t>(), offset + size) << v.name;
        if (size) {
            EXPECT_EQ(std::memcmp(data.data() + offset, v.data, size), 0) << v.name;
        }
        offset += size;
    }
    EXPECT_EQ(offset, data.size());
}

TEST(Safetensors, LoadsHandBuiltFileWithoutChecksum) {
    // what another tool might write: no crc, no metadata, keys out of data order, unpadded
    TempDir dir;
    const fs::path file = dir.path() / "foreign.safetensors";
    const std::string header = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]},)"
                               R"("s":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    write_bytes(file, hand_file(header, floats_le({9.0f, 1.0f, 2.0f, 3.0f, 4.0f})));

    const SafetensorsFile read = read_safetensors(file);
    EXPECT_EQ(read.order, (std::vector<std::string>{"s", "w"}));
    EXPECT_EQ(read.tensors.at("s").data, std::vector<float>{9.0f});
    EXPECT_EQ(read.tensors.at("w").shape, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(read.tensors.at("w").data, (std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f}));
    EXPECT_TRUE(read.metadata.empty());
}

TEST(Safetensors, TruncatedFileIsRejected) {
    TempDir dir;
    const fs::path file = dir.path() / "cut.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {});
    const auto size = fs::file_size(file);
    fs::resize_file(file, size - 10);
    const std::string msg = error_of([&] { read_safetensors(file); });
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cut.safetensors"), std::string::npos) << msg;
    EXPECT_NE(
        msg.find("expected " + std::to_string((15 + 7 + 24 + 1) * 4) +
                 " bytes of tensor data, found " + std::to_string((15 + 7 + 24 + 1) * 4 - 10)),
        std::string::npos)
        << msg;
    EXPECT_NE(error_of([&] { read_safetensors_header(file); }).find("truncated"),
              std::string::npos);

    // shorter than the length field; header cut short
    fs::resize_file(file, 5);
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("truncated"), std::string::npos);
    write_bytes(file, le64(1000) + "{}");
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("truncated"), std::string::npos);
}

// The in-memory readers are the path readers' parser over a buffer: same result, same
// rejections, the given source named.
TEST(Safetensors, BytesInMemoryReadLikeTheFile) {
    TempDir dir;
    const fs::path file = dir.path() / "ckpt.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {{"k", "v"}});
    const std::string bytes = read_bytes(file);
    const auto span = std::as_bytes(std::span(bytes.data(), bytes.size()));
    const SafetensorsFile from_file = read_safetensors(file);
    const SafetensorsFile from_bytes = parse_safetensors(span, "in memory");
    EXPECT_EQ(from_bytes.order, from_file.order);
    EXPECT_EQ(from_bytes.metadata, from_file.metadata);
    for (const auto& name : from_file.order) {
        const auto& a = from_file.tensors.at(name);
        const auto& b = from_bytes.tensors.at(name);
        EXPECT_EQ(a.shape, b.shape) << name;
        ASSERT_EQ(a.data.size(), b.data.size()) << name;
        if (!a.data.empty()) {  // memcmp on an empty vector's null data() is undefined
            EXPECT_EQ(std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)), 0)
                << name;
        }
    }
    EXPECT_EQ(parse_safetensors_header(span, "in memory").entries.size(), fx.views.size());

    const std::string msg =
        error_of([&] { parse_safetensors(span.first(span.size() - 10), "cut"); });
    EXPECT_EQ(msg.rfind("cut: truncated", 0), 0u) << msg;
    std::string flipped = bytes;
    flipped[flipped.size() - 30] ^= 0x10;
    EXPECT_NE(error_of([&] {
                  parse_safetensors(std::as_bytes(std::span(flipped.data(), flipped.size())),
                                    "flipped");
              }).find("checksum"),
              std::string::npos);
}

TEST(Safetensors, FlippedBitFailsChecksum) {
    TempDir dir;
    const fs::path file = dir.path() / "flip.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {});
    std::string bytes = read_bytes(file);
    bytes[bytes.size() - 30] ^= 0x10;
    write_bytes(file, bytes);
    const std::string msg = error_of([&] { read_safetensors(file); });
    EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
    EXPECT_NE(msg.find("flip.safetensors"), std::string::npos) << msg;
    // the header alone is still fine (inspect can list a corrupted file)
    EXPECT_NO_THROW(read_safetensors_header(file));
}

TEST(Safetensors, GarbageHeaderIsRejected) {
    TempDir dir;
    const fs::path file = dir.path() / "garbage.safetensors";
    write_bytes(file, hand_file("this is not json at all!", ""));
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("JSON"), std::string::npos);
    write_bytes(file, hand_file("[1, 2, 3]", ""));
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("object"), std::string::npos);
    // absurd header length (random bytes where the length should be)
    write_bytes(file, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "abc");
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("absurd"), std::string::npos);
}

TEST(Safetensors, MalformedEntriesAreRejectedNamingTheTensor) {
    TempDir dir;
    const fs::path file = dir.path() / "bad.safetensors";
    const std::string data = floats_le({1, 2, 3, 4});
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"t":{"shape":[4],"data_offsets":[0,16]}})", "dtype"},
        {R"({"t":{"dtype":"F32","data_offsets":[0,16]}})", "shape"},
        {R"({"t":{"dtype":"F32","shape":[4]}})", "data_offsets"},
        {R"({"t":{"dtype":"F32","shape":"4","data_offsets":[0,16]}})", "shape"},
        {R"({"t":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", "shape"},
        {R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", "data_offsets"},
        {R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", "needs 12 bytes"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
         R"("u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
         "overlap"},
        {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
         R"("u":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
         "gap"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", "gap"},
        {R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", "truncated"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "trailing"},
        {R"({"t":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", "Q4"},
        {R"({"__metadata__":{"k":3},"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
         "strings"},
        {R"({"__metadata__":{"upcycle.data_crc32":"xyz"},)"
         R"("t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
         "hex"},
    };
    for (const auto& [header, needle] : cases) {
        write_bytes(file, hand_file(header, data));
        const std::string msg = error_of([&] { read_safetensors(file); });
        EXPECT_NE(msg.find(needle), std::string::npos) << header << " -> " << msg;
        EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    }
}

TEST(Safetensors, WrongDtypeIsRejectedByNameButHeaderStillLists) {
    TempDir dir;
    const fs::path file = dir.path() / "half.safetensors";
    write_bytes(file,
                hand_file(R"({"h.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}})",
                          std::string(8, '\0')));
    const std::string msg = error_of([&] { read_safetensors(file); });
    EXPECT_NE(msg.find("F16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("only F32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("h.weight"), std::string::npos) << msg;
    const SafetensorsHeader header = read_safetensors_header(file);
    ASSERT_EQ(header.entries.size(), 1u);
    EXPECT_EQ(header.entries[0].dtype, "F16");
}

TEST(Safetensors, ExpectTensorsNamesMissingUnexpectedAndMisShaped) {
    TempDir dir;
    const fs::path file = dir.path() / "model.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {});
    const SafetensorsFile read = read_safetensors(file);

    EXPECT_NO_THROW(expect_tensors(read, file,
                                   {{"z.weight", {3, 5}},
                                    {"b.bias", {7}},
                                    {"m.blocks.0", {2, 3, 4}},
                                    {"empty", {0, 4}},
                                    {"scalar", {}}}));
    const std::string msg = error_of([&] {
        expect_tensors(read, file,
                       {{"z.weight", {5, 3}},
                        {"b.bias", {7}},
                        {"m.blocks.0", {2, 3, 4}},
                        {"empty", {0, 4}},
                        {"lnf.weight", {768}}});
    });
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing: lnf.weight [768]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("z.weight (expected [5, 3], found [3, 5])"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected: scalar []"), std::string::npos) << msg;
}

TEST(Safetensors, AtomicWriteOverwritesAndLeavesNoTempFiles) {
    TempDir dir;
    const fs::path file = dir.path() / "ckpt.safetensors";
    Fixture fx;
    write_safetensors(file, fx.views, {{"version", "1"}});
    const std::vector<float> other = {1.0f, 2.0f};
    write_safetensors(file, {{"only", {2}, other.data()}}, {{"version", "2"}});

    const SafetensorsFile read = read_safetensors(file);
    EXPECT_EQ(read.order, std::vector<std::string>{"only"});
    EXPECT_EQ(read.tensors.at("only").data, other);
    EXPECT_EQ(read.metadata.at("version"), "2");
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir.path()))
        names.push_back(entry.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"ckpt.safetensors"});

    // a failed write (directory missing) throws UserError and creates nothing
    const fs::path nowhere = dir.path() / "missing-dir" / "x.safetensors";
    EXPECT_NE(error_of([&] {
                  write_safetensors(nowhere, {{"only", {2}, other.data()}}, {});
              }).find("x.safetensors"),
              std::string::npos);
}

TEST(Safetensors, DuplicateNamesAreAProgrammerError) {
    TempDir dir;
    const std::vector<float> v = {1.0f};
    EXPECT_THROW(write_safetensors(dir.path() / "dup.safetensors",
                                   {{"a", {1}, v.data()}, {"a", {1}, v.data()}}, {}),
                 std::logic_error);
}

TEST(Safetensors, LargeTensorRoundTripsThroughTheParallelChecksum) {
    // > 8 MiB so the crc is computed in parallel chunks and combined
    TempDir dir;
    const fs::path file = dir.path() / "large.safetensors";
    std::vector<float> big(5'000'000);
    Rng rng(3);
    for (auto& x : big) x = rng.uniform();
    const std::vector<float> small = {1.0f, 2.0f, 3.0f};
    write_safetensors(file, {{"small", {3}, small.data()}, {"big", {5'000'000}, big.data()}}, {});
    const SafetensorsFile read = read_safetensors(file);
    EXPECT_EQ(read.tensors.at("big").data, big);
    // flip one bit deep inside the big tensor
    std::string bytes = read_bytes(file);
    bytes[bytes.size() / 2] ^= 0x01;
    write_bytes(file, bytes);
    EXPECT_NE(error_of([&] { read_safetensors(file); }).find("checksum"), std::string::npos);
}

}  // namespace
}  // namespace upcycle
