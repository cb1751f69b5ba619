// Fuzz target: a sweep as YAML text, read and planned the way `upcycle run` does before
// anything trains (core/sweep/sweep.h: parse_sweep — grid, zip, seeds, methods, budgets, every
// point resolved and validated — then plan_sweep: budgets to steps, trial identities).
#include "core/sweep/sweep.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text = upcycle::fuzz::as_text(data, size);
    upcycle::fuzz::expect_user_error_at_most(
        [&] { upcycle::plan_sweep(upcycle::parse_sweep(text, "fuzz_sweep.yaml")); });
    return 0;
}
