#pragma once
// Rng: a small, portable, serialisable generator (xoshiro256** seeded by splitmix64).
// std::normal_distribution differs between standard libraries; this does not, so a seed
// gives the same model everywhere and a checkpoint can restore the exact stream.
#include <array>
#include <cstdint>

namespace upcycle {

class Rng {
public:
    explicit Rng(uint64_t seed = 0) { reseed(seed); }
    void reseed(uint64_t seed);

    uint64_t next_u64();
    // uniform in [0, 1) with 24 random bits
    float uniform();
    // uniform integer in [0, n), n > 0 (Lemire's unbiased method)
    uint64_t below(uint64_t n);
    // standard normal (Box–Muller, one value per call so the state stays four words)
    float normal();

    using State = std::array<uint64_t, 4>;
    State state() const { return s_; }
    void set_state(const State& s) { s_ = s; }

private:
    State s_{};
};

}  // namespace upcycle
