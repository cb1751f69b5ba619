#pragma once
// What every fuzz target in fuzz/ shares: the libFuzzer entry point's signature and the one
// rule for outcomes. Bad input must end in upcycle::UserError (a clean one-line error naming
// the file and key); anything else escaping the parser — another exception type, an assertion
// (UPCYCLE_ASSERT throws std::logic_error), a crash, a sanitizer report, a hang — is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace upcycle::fuzz {

// Runs parse(); swallows UserError only, so every other exception reaches the fuzzer (or the
// replay driver) as an uncaught exception, i.e. an abort.
template <class Parse>
void expect_user_error_at_most(Parse&& parse) {
    try {
        parse();
    } catch (const UserError&) {
    }
}

inline std::string as_text(const uint8_t* data, size_t size) {
    return std::string(reinterpret_cast<const char*>(data), size);
}

}  // namespace upcycle::fuzz
