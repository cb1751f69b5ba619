#include "core/data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/rng.h"

namespace upcycle {

SyntheticText make_synthetic_text(std::size_t bytes, uint64_t seed) {
    Rng rng(seed);
    // successor table: row a -> kSyntheticSuccessors distinct letters, including (a + 1) % 16
    std::array<std::array<int, kSyntheticSuccessors>, kSyntheticAlphabet> next{};
    for (int a = 0; a < kSyntheticAlphabet; ++a) {
        std::array<int, kSyntheticAlphabet> letters{};
        std::iota(letters.begin(), letters.end(), 0);
        std::swap(letters[0], letters[(a + 1) % kSyntheticAlphabet]);
        // partial Fisher–Yates over the rest picks the other successors
        for (int i = 1; i < kSyntheticSuccessors; ++i) {
            const int j = i + static_cast<int>(rng.below(kSyntheticAlphabet - i));
            std::swap(letters[i], letters[j]);
        }
        std::copy_n(letters.begin(), kSyntheticSuccessors, next[a].begin());
        // the guaranteed successor takes a random rank so it is not always the likeliest
        const int rank = static_cast<int>(rng.below(kSyntheticSuccessors));
        std::swap(next[a][0], next[a][rank]);
    }

    SyntheticText out;
    out.entropy_rate_nats = 0.0;
    for (const double p : kSyntheticSuccessorProbs) out.entropy_rate_nats -= p * std::log(p);

    out.text.resize(bytes);
    int state = static_cast<int>(rng.below(kSyntheticAlphabet));
    for (std::size_t i = 0; i < bytes; ++i) {
        out.text[i] = static_cast<char>('a' + state);
        const double u = rng.uniform();
        double cumulative = 0.0;
        int pick = kSyntheticSuccessors - 1;
        for (int k = 0; k < kSyntheticSuccessors; ++k) {
            cumulative += kSyntheticSuccessorProbs[k];
            if (u < cumulative) {
                pick = k;
                break;
            }
        }
        state = next[state][pick];
    }
    return out;
}

}  // namespace upcycle
