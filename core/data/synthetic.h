#pragma once
// Tiny learnable text for tests: a first-order Markov chain over a 16-letter alphabet
// ('a'..'p'). Each letter has exactly kSyntheticSuccessors possible successors (one of them
// the next letter, so the chain visits every letter) with the fixed peaked probabilities
// kSyntheticSuccessorProbs, assigned to a seed-chosen successor set per letter. Every row has
// the same entropy, so the chain's entropy rate is that row entropy (~0.94 nats/byte) for any
// seed, far below log(16) = 2.77: a model that learns the bigram table gets close to it.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace upcycle {

inline constexpr int kSyntheticAlphabet = 16;
inline constexpr int kSyntheticSuccessors = 3;
inline constexpr std::array<double, kSyntheticSuccessors> kSyntheticSuccessorProbs = {0.6, 0.25,
                                                                                      0.15};

struct SyntheticText {
    std::string text;          // `bytes` letters from 'a'..'p'
    double entropy_rate_nats;  // per byte: the best achievable cross-entropy for any model
};

// Deterministic for a seed: the same seed gives the same table and the same text.
SyntheticText make_synthetic_text(std::size_t bytes, uint64_t seed);

}  // namespace upcycle
