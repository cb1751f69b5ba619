// Fuzz target: a run config as YAML text (core/config.h parse_run_config: YAML parsing, the
// sections and their typed keys, presets, validation).
#include "core/config.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text = upcycle::fuzz::as_text(data, size);
    upcycle::fuzz::expect_user_error_at_most(
        [&] { upcycle::parse_run_config(text, "fuzz_config.yaml"); });
    return 0;
}
