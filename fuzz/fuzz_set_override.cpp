// Fuzz target: `--set key.path=value` overrides, one per line of the input (core/yaml_input.h
// parse_override, with_value), applied as the CLI applies them: to a small valid run config
// (parse_run_config) and to a small valid sweep (parse_sweep, with its method and grid
// shorthands, then plan_sweep).
#include <sstream>
#include <vector>

#include "core/config.h"
#include "core/sweep/sweep.h"
#include "fuzz/fuzz_target.h"

namespace {

constexpr const char* kBaseConfig = R"(name: base
model: {context: 16, channels: 16, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 4096}
train: {batch_size: 2, steps: 10, warmup_steps: 2}
)";

constexpr const char* kBaseSweep = R"(name: base
model: {context: 16, channels: 16, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 4096}
train: {batch_size: 2, warmup_steps: 2}
pretrain: {steps: 10}
continue:
  budgets: [10, 50]
  methods:
    dense: {}
    upcycle: {experts: 4, k: 2}
    scratch: {}
    warmstart: {depth_multiplier: 2}
grid:
  train.lr: [0.001, 0.002]
)";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<std::string> overrides;
    std::istringstream lines(upcycle::fuzz::as_text(data, size));
    for (std::string line; std::getline(lines, line);) overrides.push_back(line);
    upcycle::fuzz::expect_user_error_at_most(
        [&] { upcycle::parse_run_config(kBaseConfig, "base_config.yaml", overrides); });
    upcycle::fuzz::expect_user_error_at_most([&] {
        upcycle::plan_sweep(upcycle::parse_sweep(kBaseSweep, "base_sweep.yaml", overrides));
    });
    return 0;
}
