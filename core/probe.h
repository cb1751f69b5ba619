#pragma once
// Few-shot linear probe on frozen features (the Sparse Upcycling paper's n-shot linear
// probe, as in ViT/big_vision): a closed-form ridge-regression classifier fitted on
// `shots` examples per class and scored by accuracy on a held-out set.
//
// Convention: features are row-major float [n, D] (n examples, D dim), labels int32 [n] in
// [0, K) (K classes). The fit works in double: targets Y [n, K] are one-hot in {0, 1};
// X and Y are centred on the fitting set's means; the bias is not penalised:
//   W = (Xcᵀ Xc + λ·n·I)⁻¹ Xcᵀ Yc        [D, K]   (solved by Cholesky; when n < D the equal
//     = Xcᵀ (Xc Xcᵀ + λ·n·I)⁻¹ Yc                   n×n dual form is solved instead)
//   b = mean(Y) − mean(X)·W               [K]
// predict(x) = argmax_k (x·W + b)_k, ties to the lowest class. A class absent from the
// fitting set scores exactly 0 while the present classes' scores sum to 1, so it never wins.
// Wrong shapes, labels out of range or λ ≤ 0 are programmer errors (UPCYCLE_ASSERT).
#include <cstdint>
#include <span>
#include <vector>

namespace upcycle {

struct RidgeClassifier {
    int dim = 0;                  // D
    int classes = 0;              // K
    std::vector<double> weights;  // [D, K] row-major
    std::vector<double> bias;     // [K]

    // feature: [D]. Returns the argmax class (lowest on ties).
    int predict(std::span<const float> feature) const;
};

// features: [n, D], labels: [n], n ≥ 1, ridge_lambda > 0.
RidgeClassifier fit_ridge_classifier(std::span<const float> features,
                                     std::span<const int32_t> labels, int dim, int classes,
                                     double ridge_lambda);

// Fraction of the examples (features [n, D], labels [n], n ≥ 1) predicted right.
double classifier_accuracy(const RidgeClassifier& classifier, std::span<const float> features,
                           std::span<const int32_t> labels, int dim);

// Picks `shots` examples per class from a labelled pool (labels [N] in [0, K)) uniformly
// without replacement, deterministically from `seed` (upcycle::Rng). A class with fewer than
// `shots` examples gives all it has. Returns indices into the pool, sorted ascending.
std::vector<int64_t> few_shot_indices(std::span<const int32_t> pool_labels, int classes,
                                      int shots, uint64_t seed);

struct FewShotResult {
    int shots = 0;
    double mean_accuracy = 0;      // mean of per_seed
    double std_accuracy = 0;       // sample standard deviation of per_seed (0 for one seed)
    std::vector<double> per_seed;  // test accuracy for seed 0 .. seeds-1
};

// For each shot count and each seed s in 0..seeds-1: choose few_shot_indices(pool_labels,
// K, shots, mix(base_seed, s)) — the same choice seed for every shot count — fit a ridge
// classifier on those pool examples and measure accuracy on the test set. One result per
// entry of `shots`, in order. pool_features [N, D], pool_labels [N], test_features [M, D],
// test_labels [M] (M ≥ 1), seeds ≥ 1.
std::vector<FewShotResult> few_shot_probe(std::span<const float> pool_features,
                                          std::span<const int32_t> pool_labels,
                                          std::span<const float> test_features,
                                          std::span<const int32_t> test_labels, int dim,
                                          int classes, const std::vector<int>& shots, int seeds,
                                          uint64_t base_seed, double ridge_lambda);

}  // namespace upcycle
