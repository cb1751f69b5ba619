#include "core/data/fashion_mnist.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fmt/format.h>
#include <memory>
#include <string>

#include "core/errors.h"

namespace upcycle {

namespace {

constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";
constexpr const char* kDirEnv = "UPCYCLE_FASHION_MNIST_DIR";
constexpr const char* kInstallHint =
    "install the Debian package dataset-fashion-mnist (sudo apt-get install "
    "dataset-fashion-mnist, or scripts/setup.sh), or set UPCYCLE_FASHION_MNIST_DIR to a "
    "directory holding the IDX files";
constexpr uint8_t kTypeUnsignedByte = 0x08;
constexpr int kMaxDims = 4;
constexpr int kImageDims = 3;
constexpr int kLabelDims = 1;
constexpr unsigned kGzBufferBytes = 1u << 20;
constexpr std::size_t kReadChunk = std::size_t{4} << 20;
constexpr uint64_t kMaxElements = uint64_t{1} << 36;  // 64 GiB: anything larger is corruption

struct GzCloser {
    void operator()(gzFile_s* g) const {
        if (g) gzclose(g);
    }
};
using GzPtr = std::unique_ptr<gzFile_s, GzCloser>;

const char* idx_type_name(uint8_t type) {
    switch (type) {
        case 0x08:
            return "unsigned byte";
        case 0x09:
            return "signed byte";
        case 0x0B:
            return "short";
        case 0x0C:
            return "int";
        case 0x0D:
            return "float";
        case 0x0E:
            return "double";
        default:
            return "unknown";
    }
}

// Reads up to n bytes; returns how many were read (fewer only at the end of the data).
// Throws on a gzip error: a stream cut short is reported as "truncated".
std::size_t gz_read(gzFile g, uint8_t* dst, std::size_t n, const std::string& file) {
    std::size_t done = 0;
    while (done < n) {
        const unsigned want = static_cast<unsigned>(std::min<std::size_t>(n - done, INT_MAX / 2));
        const int got = gzread(g, dst + done, want);
        int errnum = Z_OK;
        const char* msg = gzerror(g, &errnum);
        if (errnum == Z_BUF_ERROR)
            throw UserError(file, "",
                            "truncated: the gzip stream ends early (unexpected end of file)");
        if (got < 0 || (errnum != Z_OK && errnum != Z_STREAM_END))
            throw UserError(file, "",
                            std::string("corrupted gzip data: ") + (msg ? msg : "read error"));
        if (got == 0) break;
        done += static_cast<std::size_t>(got);
    }
    return done;
}

std::filesystem::path find_split_file(const std::filesystem::path& dir, const std::string& name) {
    std::error_code ec;
    const auto gz = dir / (name + ".gz");
    if (std::filesystem::is_regular_file(gz, ec)) return gz;
    const auto plain = dir / name;
    if (std::filesystem::is_regular_file(plain, ec)) return plain;
    throw UserError(gz.string(), "", std::string("Fashion-MNIST file not found: ") + kInstallHint);
}

}  // namespace

std::filesystem::path fashion_mnist_dir() {
    const char* env = std::getenv(kDirEnv);
    if (env && *env) return env;
    return kDefaultDir;
}

std::vector<uint8_t> read_idx_file(const std::filesystem::path& path, std::vector<int>& dims_out) {
    const std::string file = path.string();
    dims_out.clear();
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
        throw UserError(
            file, "",
            std::filesystem::exists(path, ec) ? "not a regular file" : "IDX file not found");
    GzPtr g(gzopen(path.c_str(), "rb"));
    if (!g) throw UserError(file, "", "cannot open IDX file");
    gzbuffer(g.get(), kGzBufferBytes);

    uint8_t magic[4];
    const std::size_t got_magic = gz_read(g.get(), magic, sizeof magic, file);
    if (got_magic < sizeof magic)
        throw UserError(file, "",
                        fmt::format("truncated: {} bytes, shorter than the 4-byte IDX "
                                    "magic number",
                                    got_magic));
    const uint32_t magic_value = (uint32_t{magic[0]} << 24) | (uint32_t{magic[1]} << 16) |
                                 (uint32_t{magic[2]} << 8) | magic[3];
    const int ndims = magic[3];
    if (magic[0] != 0 || magic[1] != 0 || ndims < 1 || ndims > kMaxDims)
        throw UserError(file, "",
                        fmt::format("bad magic 0x{:08x}: not an IDX file (expected 0x000008NN with "
                                    "NN = 1..{} dims, e.g. 0x00000803 for images, 0x00000801 for "
                                    "labels)",
                                    magic_value, kMaxDims));
    if (magic[2] != kTypeUnsignedByte)
        throw UserError(file, "",
                        fmt::format("wrong data type 0x{:02x} ({}) in magic 0x{:08x}: only 0x08 "
                                    "(unsigned byte) is supported",
                                    magic[2], idx_type_name(magic[2]), magic_value));

    std::vector<uint8_t> dim_bytes(static_cast<std::size_t>(4 * ndims));
    if (gz_read(g.get(), dim_bytes.data(), dim_bytes.size(), file) < dim_bytes.size())
        throw UserError(file, "",
                        fmt::format("truncated: the header ends before its {} dimensions", ndims));
    uint64_t total = 1;
    for (int d = 0; d < ndims; ++d) {
        const uint8_t* b = &dim_bytes[static_cast<std::size_t>(4 * d)];
        const uint32_t dim =
            (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
        if (dim > static_cast<uint32_t>(INT_MAX))
            throw UserError(file, "", fmt::format("dimension {} is absurd: {}", d, dim));
        dims_out.push_back(static_cast<int>(dim));
        total *= dim;
        if (total > kMaxElements)
            throw UserError(file, "", "dimensions are absurd (more than 2^36 elements)");
    }

    // read in chunks so a corrupt header cannot make us allocate before the data is there
    std::vector<uint8_t> data;
    data.reserve(static_cast<std::size_t>(std::min<uint64_t>(total, uint64_t{1} << 28)));
    while (data.size() < total) {
        const std::size_t old = data.size();
        const std::size_t want =
            static_cast<std::size_t>(std::min<uint64_t>(total - old, kReadChunk));
        data.resize(old + want);
        const std::size_t got = gz_read(g.get(), data.data() + old, want, file);
        data.resize(old + got);
        if (got < want)
            throw UserError(file, "",
                            fmt::format("truncated: expected {} bytes of data after the header, "
                                        "found {}",
                                        total, data.size()));
    }
    uint8_t extra;
    if (gz_read(g.get(), &extra, 1, file) != 0)
        throw UserError(
            file, "",
            fmt::format("trailing bytes after the {} bytes of data the header declares", total));
    return data;
}

ImageDataset load_fashion_mnist(FashionMnistSplit split, const std::filesystem::path& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
        throw UserError(dir.string(), "",
                        std::string("Fashion-MNIST directory not found: ") + kInstallHint);
    const std::string prefix = split == FashionMnistSplit::Train ? "train" : "t10k";
    const auto images_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
    const auto labels_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");

    ImageDataset out;
    std::vector<int> dims;
    out.pixels = read_idx_file(images_path, dims);
    if (dims.size() != kImageDims)
        throw UserError(images_path.string(), "",
                        fmt::format("expected an IDX image file (magic 0x00000803: unsigned bytes, "
                                    "3 dims), found 0x000008{:02x} ({} dims)",
                                    dims.size(), dims.size()));
    out.count = dims[0];
    out.rows = dims[1];
    out.cols = dims[2];
    out.labels = read_idx_file(labels_path, dims);
    if (dims.size() != kLabelDims)
        throw UserError(labels_path.string(), "",
                        fmt::format("expected an IDX label file (magic 0x00000801: unsigned bytes, "
                                    "1 dim), found 0x000008{:02x} ({} dims)",
                                    dims.size(), dims.size()));
    if (dims[0] != out.count)
        throw UserError(labels_path.string(), "",
                        fmt::format("holds {} labels but {} holds {} images", dims[0],
                                    images_path.string(), out.count));
    const auto bad = std::find_if(out.labels.begin(), out.labels.end(),
                                  [](uint8_t l) { return l >= kFashionMnistClasses; });
    if (bad != out.labels.end())
        throw UserError(labels_path.string(), "",
                        fmt::format("label {} at index {} is outside 0..{}", *bad,
                                    bad - out.labels.begin(), kFashionMnistClasses - 1));
    return out;
}

}  // namespace upcycle
