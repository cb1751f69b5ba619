#pragma once
// SHA-256 (FIPS 180-4), for trial identities: a trial's hash is sha256_hex of its canonical
// config JSON. Self-contained so that core needs no crypto library.
#include <string>
#include <string_view>

namespace upcycle {

// The digest of `data` as 64 lowercase hex digits.
std::string sha256_hex(std::string_view data);

}  // namespace upcycle
