#pragma once
// SHA-256 (OpenSSL's EVP digest), the one hash of the project: trial identities (sha256_hex of a
// trial's canonical config JSON) and artifact checksums in the store (sha256_file).
#include <filesystem>
#include <string>
#include <string_view>

namespace upcycle {

// The digest of `data` as 64 lowercase hex digits.
std::string sha256_hex(std::string_view data);

// The digest of a file's bytes, read in chunks; UserError (file = path) if it cannot be read.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace upcycle
