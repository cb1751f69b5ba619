#pragma once
// safetensors read/write: the checkpoint container (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian u64 header length N, then N bytes of JSON header
//   { "__metadata__": {"key": "string value", ...},
//     "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ... }
// padded with spaces so the data starts at a multiple of 8 bytes, then the data buffer
// (offsets relative to its start; tensors contiguous, no gaps, no overlap; little-endian).
//
// We write host fp32 only ("F32"), in the order given, and add two metadata keys:
//   "upcycle.data_crc32": zlib crc32 of the whole data buffer, 8 lowercase hex digits; checked
//                         on read when present (files from other tools have none and load);
//   "format": "pt", what PyTorch tooling (safetensors.torch, transformers) expects; a caller's
//             own "format" value wins.
// Writes are atomic: a temp file in the target's directory is written, flushed, fsync'ed and
// renamed over the target, so a crash leaves either the old file or the new one.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace upcycle {

// The metadata key holding the data checksum (an integrity key, stripped by read_safetensors).
inline constexpr const char* kSafetensorsCrcKey = "upcycle.data_crc32";

// A tensor to write: host fp32, row-major, shape.product() floats at data.
struct TensorView {
    std::string name;
    std::vector<int64_t> shape;
    const float* data;
};

struct HostTensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

struct SafetensorsFile {
    std::vector<std::string> order;  // tensor names in file (data offset) order
    std::map<std::string, HostTensor> tensors;
    std::map<std::string, std::string> metadata;  // __metadata__ without "upcycle.data_crc32"
};

struct SafetensorsEntry {
    std::string name;
    std::string dtype;  // "F32", or any other safetensors dtype (see read_safetensors_header)
    std::vector<int64_t> shape;
    uint64_t begin, end;  // byte offsets in the data buffer
};

struct SafetensorsHeader {
    std::vector<SafetensorsEntry> entries;        // in file (data offset) order
    std::map<std::string, std::string> metadata;  // all of __metadata__, integrity keys included
    uint64_t data_bytes;                          // length of the data buffer
};

// Writes the tensors in the given order (names must be unique: a programmer invariant).
// Throws UserError naming the file when it cannot be written (permissions, disk full).
// What remove_abandoned_temporaries removed.
struct RemovedTemporaries {
    int files = 0;
    std::uintmax_t bytes = 0;
};

// write_safetensors writes ".NAME.tmp-PID-N" beside its target and renames it into place; a
// writer killed before the rename leaves it behind. Removes those in `dir` whose writer's PID
// no longer exists on this host (a live writer's are kept).
RemovedTemporaries remove_abandoned_temporaries(const std::filesystem::path& dir);

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Reads and validates the header only (no tensor data is read; the file length is checked
// against the offsets). Meant for `inspect`: any safetensors dtype (F64, F32, F16, BF16,
// I64, ..., BOOL, F8_E4M3, F8_E5M2) is accepted here so foreign checkpoints can be listed;
// unknown dtypes are rejected. Throws UserError naming the file (and tensor) on bad input.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

// Reads everything: header validated as above, every tensor must be F32, and the data crc is
// checked when the file carries one. Throws UserError naming the file (and tensor).
SafetensorsFile read_safetensors(const std::filesystem::path& path);

// The same two readers over a whole file already in memory (source names it in errors); the
// path readers above go through the same parser.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> bytes,
                                           const std::string& source);
SafetensorsFile parse_safetensors(std::span<const std::byte> bytes, const std::string& source);

// Checks that `file` (read from `path`) holds exactly these tensors with these shapes; on
// mismatch throws UserError naming the file and listing the first few missing, unexpected
// and mis-shaped tensors (expected vs found shape).
void expect_tensors(const SafetensorsFile& file, const std::filesystem::path& path,
                    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected);

}  // namespace upcycle
