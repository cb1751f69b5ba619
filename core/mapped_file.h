#pragma once
// Read-only memory maps of whole files: token corpora (core/data/token_shards.h) and imported
// weights (core/import/) are read through them, so a large file is paged in on demand.
#include <cstddef>
#include <filesystem>
#include <span>

namespace upcycle {

// A whole file mapped read-only (RAII: unmapped when destroyed). An empty file maps nothing.
class MappedFile {
public:
    // UserError naming the file when it cannot be opened or mapped.
    explicit MappedFile(const std::filesystem::path& path);
    ~MappedFile();
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    std::span<const std::byte> bytes() const { return {data_, size_}; }

private:
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace upcycle
