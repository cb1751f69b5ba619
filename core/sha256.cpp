#include "core/sha256.h"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <vector>

#include "core/errors.h"

namespace upcycle {

namespace {

constexpr std::size_t kFileChunkBytes = 1 << 20;

// One digest in progress (RAII over OpenSSL's context).
class Sha256 {
public:
    Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
        const bool started = ctx_ && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1;
        UPCYCLE_ASSERT(started, "OpenSSL could not start a SHA-256 digest");
    }
    void update(const void* data, std::size_t bytes) {
        const bool updated = EVP_DigestUpdate(ctx_.get(), data, bytes) == 1;
        UPCYCLE_ASSERT(updated, "SHA-256 update failed");
    }
    std::string hex() {
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int length = 0;
        const bool finished = EVP_DigestFinal_ex(ctx_.get(), digest, &length) == 1;
        UPCYCLE_ASSERT(finished, "SHA-256 final failed");
        static constexpr char kDigits[] = "0123456789abcdef";
        std::string out;
        out.reserve(2 * length);
        for (unsigned int i = 0; i < length; ++i) {
            out += kDigits[digest[i] >> 4];
            out += kDigits[digest[i] & 0xF];
        }
        return out;
    }

private:
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

}  // namespace

std::string sha256_hex(std::string_view data) {
    Sha256 digest;
    digest.update(data.data(), data.size());
    return digest.hex();
}

std::string sha256_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UserError(path.string(), "", "cannot read the file to hash it");
    Sha256 digest;
    std::vector<char> buffer(kFileChunkBytes);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        const auto n = in.gcount();
        if (n > 0) digest.update(buffer.data(), static_cast<std::size_t>(n));
    }
    if (in.bad()) throw UserError(path.string(), "", "read error while hashing the file");
    return digest.hex();
}

}  // namespace upcycle
