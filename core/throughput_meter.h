#pragma once
// Training throughput over an interval of steps: the tokens trained since the last reset per
// wall second since then. The trainer resets it after each logged step, evaluation and
// checkpoint, so their time does not count as training.
#include <chrono>
#include <cstdint>

namespace upcycle {

struct ThroughputMeter {
    using Clock = std::chrono::steady_clock;
    Clock::time_point start = Clock::now();
    int64_t tokens = 0;

    void add(int64_t step_tokens) { tokens += step_tokens; }
    double tokens_per_second() const {
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        return seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
    }
    void reset() {
        start = Clock::now();
        tokens = 0;
    }
};

}  // namespace upcycle
