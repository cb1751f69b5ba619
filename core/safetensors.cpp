#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "core/errors.h"
#include "core/process_liveness.h"
#include "core/tensor.h"

namespace upcycle {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swapping");

namespace {

using ordered_json = nlohmann::ordered_json;

constexpr uint64_t kLengthFieldBytes = 8;
constexpr uint64_t kHeaderAlignment = 8;
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // the reference implementation's limit
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kFormatKey = "format";
constexpr const char* kFormatValue = "pt";
constexpr std::size_t kMaxListed = 5;  // tensors listed per category in expect_tensors

// ---- helpers ----------------------------------------------------------------------------------

struct FileCloser {
    void operator()(std::FILE* f) const {
        if (f) std::fclose(f);
    }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

std::string errno_text() { return std::strerror(errno); }

std::string hex32(uint32_t value) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", value);
    return buf;
}

// Bytes per element of each safetensors dtype (the names the reference implementation uses).
std::optional<uint64_t> dtype_bytes(const std::string& dtype) {
    static const std::map<std::string, uint64_t> sizes = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
        {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
        {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
    };
    const auto it = sizes.find(dtype);
    if (it == sizes.end()) return std::nullopt;
    return it->second;
}

// Product of the dims, or nullopt on overflow past 2^63.
std::optional<uint64_t> checked_numel(const std::vector<int64_t>& shape) {
    uint64_t n = 1;
    for (const int64_t d : shape) {
        if (d < 0) return std::nullopt;
        const auto ud = static_cast<uint64_t>(d);
        if (ud != 0 && n > (uint64_t{1} << 62) / ud) return std::nullopt;
        n *= ud;
    }
    return n;
}

// zlib crc32 of a large buffer, split across threads and joined with crc32_combine.
uint32_t crc32_extend(uint32_t crc, const unsigned char* data, uint64_t n) {
    constexpr uint64_t kChunk = uint64_t{8} << 20;  // 8 MiB per task
    if (n <= kChunk) return static_cast<uint32_t>(crc32_z(crc, data, n));
    const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
    std::vector<uLong> part(static_cast<std::size_t>(chunks));
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        const uint64_t begin = static_cast<uint64_t>(c) * kChunk;
        const uint64_t len = std::min(kChunk, n - begin);
        part[static_cast<std::size_t>(c)] = crc32_z(0, data + begin, len);
    }
    uLong out = crc;
    for (int64_t c = 0; c < chunks; ++c) {
        const uint64_t begin = static_cast<uint64_t>(c) * kChunk;
        const uint64_t len = std::min(kChunk, n - begin);
        out = crc32_combine(out, part[static_cast<std::size_t>(c)], static_cast<z_off_t>(len));
    }
    return static_cast<uint32_t>(out);
}

// ---- where the bytes come from -----------------------------------------------------------------

// A file read front to back, or a whole file already in memory: one parser reads both, so what
// the fuzz target (fuzz/fuzz_safetensors.cpp) exercises is exactly what loads checkpoints.
class ByteSource {
public:
    virtual ~ByteSource() = default;
    virtual uint64_t size() const = 0;
    // Copies the next n bytes to out; false when they cannot be read (see failure()).
    virtual bool read(void* out, uint64_t n) = 0;
    // Why the last read() failed, for an error message.
    virtual std::string failure() const = 0;
};

class FileSource final : public ByteSource {
public:
    FileSource(std::FILE* f, const std::string& file) : f_(f) {
        struct stat st {};
        if (::fstat(::fileno(f), &st) != 0)
            throw UserError(file, "", "cannot stat: " + errno_text());
        if (!S_ISREG(st.st_mode)) throw UserError(file, "", "not a regular file");
        size_ = static_cast<uint64_t>(st.st_size);
    }
    uint64_t size() const override { return size_; }
    bool read(void* out, uint64_t n) override { return std::fread(out, 1, n, f_) == n; }
    std::string failure() const override {
        return std::ferror(f_) ? errno_text()
                               : "the file ends early (was it changed while reading?)";
    }

private:
    std::FILE* f_;
    uint64_t size_ = 0;
};

class MemorySource final : public ByteSource {
public:
    explicit MemorySource(std::span<const std::byte> bytes) : bytes_(bytes) {}
    uint64_t size() const override { return bytes_.size(); }
    bool read(void* out, uint64_t n) override {
        if (n > bytes_.size() - pos_) return false;
        if (n) std::memcpy(out, bytes_.data() + pos_, n);
        pos_ += n;
        return true;
    }
    std::string failure() const override { return "the buffer ends early"; }

private:
    std::span<const std::byte> bytes_;
    uint64_t pos_ = 0;
};

// ---- header parsing ---------------------------------------------------------------------------

struct ParsedHeader {
    SafetensorsHeader header;
    uint64_t header_bytes = 0;  // N
};

std::vector<int64_t> parse_shape(const ordered_json& value, const std::string& file,
                                 const std::string& name) {
    if (!value.is_array())
        throw UserError(file, name,
                        "\"shape\" must be an array of non-negative integers, found " +
                            std::string(value.type_name()));
    std::vector<int64_t> shape;
    for (const auto& d : value) {
        if (!d.is_number_unsigned())  // nlohmann stores every non-negative integer as unsigned
            throw UserError(
                file, name,
                "\"shape\" must be an array of non-negative integers, found " + value.dump());
        const auto ud = d.get<uint64_t>();
        if (ud > static_cast<uint64_t>(INT64_MAX))
            throw UserError(file, name, "\"shape\" dimension too large: " + value.dump());
        shape.push_back(static_cast<int64_t>(ud));
    }
    return shape;
}

SafetensorsEntry parse_entry(const std::string& name, const ordered_json& value,
                             const std::string& file) {
    if (!value.is_object())
        throw UserError(file, name,
                        "tensor entry must be an object with \"dtype\", \"shape\" and "
                        "\"data_offsets\", found " +
                            std::string(value.type_name()));
    for (const char* field : {"dtype", "shape", "data_offsets"})
        if (!value.contains(field))
            throw UserError(file, name, std::string("tensor entry is missing \"") + field + "\"");
    SafetensorsEntry entry;
    entry.name = name;
    const auto& dtype = value["dtype"];
    if (!dtype.is_string())
        throw UserError(file, name, "\"dtype\" must be a string, found " + dtype.dump());
    entry.dtype = dtype.get<std::string>();
    const auto elem = dtype_bytes(entry.dtype);
    if (!elem)
        throw UserError(
            file, name,
            "unknown dtype \"" + entry.dtype + "\" (only F32 is supported for reading tensors)");
    entry.shape = parse_shape(value["shape"], file, name);
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
        throw UserError(file, name,
                        "\"data_offsets\" must be [begin, end] with non-negative integers, found " +
                            offsets.dump());
    entry.begin = offsets[0].get<uint64_t>();
    entry.end = offsets[1].get<uint64_t>();
    if (entry.end < entry.begin)
        throw UserError(file, name, "\"data_offsets\" " + offsets.dump() + " end before begin");
    const auto numel = checked_numel(entry.shape);
    if (!numel || *numel > (uint64_t{1} << 62) / *elem)
        throw UserError(file, name, "shape " + shape_string(entry.shape) + " is too large");
    const uint64_t want = *numel * *elem;
    if (want != entry.end - entry.begin)
        throw UserError(file, name,
                        "shape " + shape_string(entry.shape) + " of dtype " + entry.dtype +
                            " needs " + std::to_string(want) + " bytes, but data_offsets " +
                            offsets.dump() + " span " + std::to_string(entry.end - entry.begin));
    return entry;
}

// Reads the length field and the JSON header from `in` (positioned at 0), validates everything
// that can be checked without the data, and leaves `in` at the start of the data buffer.
ParsedHeader read_header(ByteSource& in, const std::string& file) {
    const uint64_t file_bytes = in.size();
    if (file_bytes < kLengthFieldBytes)
        throw UserError(file, "",
                        "truncated: the file is " + std::to_string(file_bytes) +
                            " bytes, shorter than the 8-byte safetensors header length");
    unsigned char len_bytes[kLengthFieldBytes];
    if (!in.read(len_bytes, kLengthFieldBytes))
        throw UserError(file, "", "cannot read the header length: " + in.failure());
    uint64_t n = 0;
    for (int i = static_cast<int>(kLengthFieldBytes) - 1; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > kMaxHeaderBytes)
        throw UserError(file, "",
                        "header length " + std::to_string(n) +
                            " bytes is absurd (limit 100 MB): not a safetensors file?");
    if (n > file_bytes - kLengthFieldBytes)
        throw UserError(file, "",
                        "truncated: header length is " + std::to_string(n) + " bytes but only " +
                            std::to_string(file_bytes - kLengthFieldBytes) +
                            " bytes follow the length field");
    std::string text(n, '\0');
    if (!in.read(text.data(), n))
        throw UserError(file, "", "cannot read the header: " + in.failure());

    ordered_json json = ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded())
        throw UserError(file, "", "safetensors header is not valid JSON (not a safetensors file?)");
    if (!json.is_object())
        throw UserError(
            file, "",
            std::string("safetensors header must be a JSON object, found ") + json.type_name());

    ParsedHeader out;
    out.header_bytes = n;
    auto& entries = out.header.entries;
    for (const auto& [key, value] : json.items()) {
        if (key == kMetadataKey) {
            if (value.is_null()) continue;
            if (!value.is_object())
                throw UserError(file, kMetadataKey, "must be an object of string values");
            for (const auto& [mkey, mvalue] : value.items()) {
                if (!mvalue.is_string())
                    throw UserError(file, std::string(kMetadataKey) + "." + mkey,
                                    "metadata values must be strings, found " + mvalue.dump());
                out.header.metadata[mkey] = mvalue.get<std::string>();
            }
            continue;
        }
        entries.push_back(parse_entry(key, value, file));
    }
    // file order = data order; stable so zero-size tensors keep their header order
    std::stable_sort(entries.begin(), entries.end(),
                     [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
                         return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                     });
    uint64_t expected = 0;
    const SafetensorsEntry* prev = nullptr;
    for (const auto& e : entries) {
        if (e.begin < expected)
            throw UserError(file, e.name,
                            "data_offsets [" + std::to_string(e.begin) + ", " +
                                std::to_string(e.end) + "] overlap tensor '" + prev->name + "'");
        if (e.begin > expected)
            throw UserError(file, e.name,
                            "data_offsets [" + std::to_string(e.begin) + ", " +
                                std::to_string(e.end) + "] leave a gap of " +
                                std::to_string(e.begin - expected) + " bytes after " +
                                (prev ? "tensor '" + prev->name + "'"
                                      : std::string("the start of the data buffer")));
        expected = e.end;
        prev = &e;
    }
    out.header.data_bytes = expected;
    const uint64_t found = file_bytes - kLengthFieldBytes - n;
    if (found < expected)
        throw UserError(file, "",
                        "truncated: expected " + std::to_string(expected) +
                            " bytes of tensor data, found " + std::to_string(found));
    if (found > expected)
        throw UserError(file, "",
                        "expected " + std::to_string(expected) + " bytes of tensor data, found " +
                            std::to_string(found) + " (" + std::to_string(found - expected) +
                            " trailing bytes no tensor accounts for)");
    return out;
}

FilePtr open_for_reading(const std::filesystem::path& path) {
    FilePtr f(std::fopen(path.c_str(), "rb"));
    if (!f) throw UserError(path.string(), "", "cannot open checkpoint: " + errno_text());
    return f;
}

std::string temp_path_for(const std::filesystem::path& path) {
    static std::atomic<uint64_t> counter{0};
    return "." + path.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter.fetch_add(1));
}

void fsync_directory(const std::filesystem::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;  // best effort: the rename itself is already atomic
    (void)::fsync(fd);
    ::close(fd);
}

}  // namespace

// ---- write ------------------------------------------------------------------------------------

RemovedTemporaries remove_abandoned_temporaries(const std::filesystem::path& dir) {
    RemovedTemporaries removed;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        const auto tmp = name.rfind(".tmp-");
        if (name.empty() || name[0] != '.' || tmp == std::string::npos) continue;
        // ".NAME.tmp-PID-N": the PID sits between ".tmp-" and the last '-'
        const auto dash = name.rfind('-');
        if (dash <= tmp + 5) continue;
        const auto pid = trailing_pid(name.substr(0, dash), '-');
        if (!pid || process_exists(*pid)) continue;
        std::error_code size_error;
        const auto bytes = entry.file_size(size_error);
        if (std::filesystem::remove(entry.path(), ec)) {
            ++removed.files;
            removed.bytes += size_error ? 0 : bytes;
        }
    }
    return removed;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    const std::string file = path.string();
    UPCYCLE_ASSERT(!metadata.count(kSafetensorsCrcKey),
                   std::string("metadata key '") + kSafetensorsCrcKey + "' is reserved");

    // offsets and checksum
    std::set<std::string> names;
    std::vector<uint64_t> bytes(tensors.size());
    uint32_t crc = static_cast<uint32_t>(crc32_z(0, nullptr, 0));
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        const auto& t = tensors[i];
        UPCYCLE_ASSERT(t.name != kMetadataKey, "tensor name '__metadata__' is reserved");
        UPCYCLE_ASSERT(names.insert(t.name).second,
                       "duplicate tensor name '" + t.name + "' in write_safetensors");
        const auto numel = checked_numel(t.shape);
        UPCYCLE_ASSERT(numel.has_value(),
                       "tensor '" + t.name + "' has an invalid shape " + shape_string(t.shape));
        UPCYCLE_ASSERT(t.data != nullptr || *numel == 0, "tensor '" + t.name + "' has no data");
        bytes[i] = *numel * sizeof(float);
        if (bytes[i])
            crc = crc32_extend(crc, reinterpret_cast<const unsigned char*>(t.data), bytes[i]);
    }

    ordered_json header = ordered_json::object();
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    if (!meta.contains(kFormatKey)) meta[kFormatKey] = kFormatValue;
    meta[kSafetensorsCrcKey] = hex32(crc);
    header[kMetadataKey] = std::move(meta);
    uint64_t offset = 0;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        ordered_json entry = ordered_json::object();
        entry["dtype"] = "F32";
        entry["shape"] = tensors[i].shape;
        entry["data_offsets"] = {offset, offset + bytes[i]};
        header[tensors[i].name] = std::move(entry);
        offset += bytes[i];
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {
        throw UserError(file, "", std::string("cannot encode the safetensors header: ") + e.what());
    }
    text.append((kHeaderAlignment - text.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
    unsigned char len_bytes[kLengthFieldBytes];
    for (std::size_t i = 0; i < kLengthFieldBytes; ++i)
        len_bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

    // atomic replace: write a temp file beside the target, sync, rename over the target
    const std::filesystem::path dir =
        path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    const std::filesystem::path tmp = dir / temp_path_for(path);
    FilePtr f(std::fopen(tmp.c_str(), "wb"));
    if (!f)
        throw UserError(file, "",
                        "cannot create temporary file " + tmp.string() + ": " + errno_text());
    auto fail = [&](const std::string& what) {
        const std::string reason = errno_text();
        f.reset();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        throw UserError(file, "", what + ": " + reason);
    };
    if (std::fwrite(len_bytes, 1, kLengthFieldBytes, f.get()) != kLengthFieldBytes ||
        std::fwrite(text.data(), 1, text.size(), f.get()) != text.size())
        fail("cannot write the header");
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        if (bytes[i] && std::fwrite(tensors[i].data, 1, bytes[i], f.get()) != bytes[i])
            fail("cannot write tensor '" + tensors[i].name + "'");
    }
    if (std::fflush(f.get()) != 0) fail("cannot flush");
    if (::fsync(::fileno(f.get())) != 0) fail("cannot fsync");
    if (std::fclose(f.release()) != 0) {
        const std::string reason = errno_text();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        throw UserError(file, "", "cannot close: " + reason);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const std::string reason = errno_text();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        throw UserError(file, "", "cannot rename the temporary file over the target: " + reason);
    }
    fsync_directory(dir);
}

// ---- read -------------------------------------------------------------------------------------

namespace {

// Everything after the header: dtypes, the data, the checksum.
SafetensorsFile read_all(ByteSource& in, const std::string& file) {
    ParsedHeader parsed = read_header(in, file);
    for (const auto& e : parsed.header.entries)
        if (e.dtype != "F32")
            throw UserError(file, e.name,
                            "dtype is " + e.dtype +
                                ", but only F32 is supported (upcycle reads and writes fp32 "
                                "checkpoints; convert the file to float32 first)");

    SafetensorsFile out;
    out.metadata = parsed.header.metadata;
    std::optional<uint32_t> stored_crc;
    if (const auto it = out.metadata.find(kSafetensorsCrcKey); it != out.metadata.end()) {
        const std::string& hex = it->second;
        const bool ok = hex.size() == 8 && std::all_of(hex.begin(), hex.end(), [](char c) {
                            return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                        });
        if (!ok)
            throw UserError(file, std::string(kMetadataKey) + "." + kSafetensorsCrcKey,
                            "expected 8 hex digits, found \"" + hex + "\"");
        stored_crc = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
        out.metadata.erase(it);
    }

    // tensors are contiguous in offset order, so one sequential pass reads the whole buffer
    out.order.reserve(parsed.header.entries.size());
    for (const auto& e : parsed.header.entries) {
        HostTensor t;
        t.shape = e.shape;
        const uint64_t bytes = e.end - e.begin;
        t.data.resize(bytes / sizeof(float));
        if (bytes && !in.read(t.data.data(), bytes))
            throw UserError(file, e.name, "cannot read tensor data: " + in.failure());
        out.order.push_back(e.name);
        out.tensors.emplace(e.name, std::move(t));
    }

    if (stored_crc) {
        uint32_t crc = static_cast<uint32_t>(crc32_z(0, nullptr, 0));
        for (const auto& name : out.order) {
            const auto& data = out.tensors.at(name).data;
            if (!data.empty())
                crc = crc32_extend(crc, reinterpret_cast<const unsigned char*>(data.data()),
                                   data.size() * sizeof(float));
        }
        if (crc != *stored_crc)
            throw UserError(file, "",
                            "corrupted: checksum mismatch (header records crc32 " +
                                hex32(*stored_crc) + ", the tensor data has " + hex32(crc) + ")");
    }
    return out;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
    FilePtr f = open_for_reading(path);
    FileSource in(f.get(), path.string());
    return read_header(in, path.string()).header;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
    FilePtr f = open_for_reading(path);
    FileSource in(f.get(), path.string());
    return read_all(in, path.string());
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> bytes,
                                           const std::string& source) {
    MemorySource in(bytes);
    return read_header(in, source).header;
}

SafetensorsFile parse_safetensors(std::span<const std::byte> bytes, const std::string& source) {
    MemorySource in(bytes);
    return read_all(in, source);
}

// ---- expect_tensors ---------------------------------------------------------------------------

void expect_tensors(const SafetensorsFile& file, const std::filesystem::path& path,
                    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected) {
    std::vector<std::string> missing, mis_shaped, unexpected;
    std::set<std::string> wanted;
    for (const auto& [name, shape] : expected) {
        wanted.insert(name);
        const auto it = file.tensors.find(name);
        if (it == file.tensors.end())
            missing.push_back(name + " " + shape_string(shape));
        else if (it->second.shape != shape)
            mis_shaped.push_back(name + " (expected " + shape_string(shape) + ", found " +
                                 shape_string(it->second.shape) + ")");
    }
    for (const auto& name : file.order)
        if (!wanted.count(name))
            unexpected.push_back(name + " " + shape_string(file.tensors.at(name).shape));
    if (missing.empty() && mis_shaped.empty() && unexpected.empty()) return;

    std::ostringstream msg;
    msg << "checkpoint tensors do not match the model";
    auto list = [&msg](const char* what, const std::vector<std::string>& items) {
        if (items.empty()) return;
        msg << "; " << items.size() << " " << what << ": ";
        for (std::size_t i = 0; i < items.size() && i < kMaxListed; ++i)
            msg << (i ? ", " : "") << items[i];
        if (items.size() > kMaxListed) msg << ", ... (" << items.size() - kMaxListed << " more)";
    };
    list("missing", missing);
    list("with the wrong shape", mis_shaped);
    list("unexpected", unexpected);
    throw UserError(path.string(), "", msg.str());
}

}  // namespace upcycle
