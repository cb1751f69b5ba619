// Fuzz target: a safetensors file as bytes, read the way a checkpoint is loaded — header
// (length field, JSON, dtypes, shapes, offsets), data and checksum (core/safetensors.h), then
// the checkpoint checks on top (core/checkpoint.h: metadata, the stored config, the tensors
// the config's model expects).
#include <span>

#include "core/checkpoint.h"
#include "core/safetensors.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto bytes = std::as_bytes(std::span(data, size));
    const std::string source = "fuzz.safetensors";
    upcycle::fuzz::expect_user_error_at_most([&] {
        upcycle::checkpoint_from_safetensors(upcycle::parse_safetensors(bytes, source), source);
    });
    return 0;
}
