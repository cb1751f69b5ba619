#include "core/probe.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

namespace {

// In place: a [m, m] row-major symmetric positive definite (lower triangle read) becomes its
// Cholesky factor L (lower triangle; the upper triangle is left as it was) with a = L·Lᵀ.
void cholesky_factor(std::vector<double>& a, std::size_t m) {
    for (std::size_t j = 0; j < m; ++j) {
        double* row_j = &a[j * m];
        double pivot = row_j[j];
        for (std::size_t p = 0; p < j; ++p) pivot -= row_j[p] * row_j[p];
        UPCYCLE_ASSERT(pivot > 0, "ridge Cholesky: non-positive pivot " + std::to_string(pivot) +
                                      " at column " + std::to_string(j));
        const double diag = std::sqrt(pivot);
        row_j[j] = diag;
        for (std::size_t i = j + 1; i < m; ++i) {
            double* row_i = &a[i * m];
            double v = row_i[j];
            for (std::size_t p = 0; p < j; ++p) v -= row_i[p] * row_j[p];
            row_i[j] = v / diag;
        }
    }
}

// In place: b [m, k] row-major becomes (L·Lᵀ)⁻¹ b, L the factor from cholesky_factor.
void cholesky_solve(const std::vector<double>& l, std::size_t m, std::vector<double>& b,
                    std::size_t k) {
    // forward: L y = b
    for (std::size_t i = 0; i < m; ++i) {
        double* bi = &b[i * k];
        for (std::size_t p = 0; p < i; ++p) {
            const double lip = l[i * m + p];
            const double* bp = &b[p * k];
            for (std::size_t c = 0; c < k; ++c) bi[c] -= lip * bp[c];
        }
        const double inv = 1.0 / l[i * m + i];
        for (std::size_t c = 0; c < k; ++c) bi[c] *= inv;
    }
    // backward: Lᵀ x = y
    for (std::size_t ii = m; ii-- > 0;) {
        double* bi = &b[ii * k];
        for (std::size_t p = ii + 1; p < m; ++p) {
            const double lpi = l[p * m + ii];
            const double* bp = &b[p * k];
            for (std::size_t c = 0; c < k; ++c) bi[c] -= lpi * bp[c];
        }
        const double inv = 1.0 / l[ii * m + ii];
        for (std::size_t c = 0; c < k; ++c) bi[c] *= inv;
    }
}

uint64_t splitmix_finalize(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// The choice seed of seed index s under base_seed.
uint64_t mix_seed(uint64_t base_seed, uint64_t s) {
    return splitmix_finalize(splitmix_finalize(base_seed + 0x9e3779b97f4a7c15ULL) ^
                             (s * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
}

void check_shapes(std::span<const float> features, std::span<const int32_t> labels, int dim,
                  const char* what) {
    UPCYCLE_ASSERT(dim > 0, std::string(what) + ": dim must be positive");
    UPCYCLE_ASSERT(features.size() == labels.size() * static_cast<std::size_t>(dim),
                   std::string(what) + ": features hold " + std::to_string(features.size()) +
                       " values, expected labels (" + std::to_string(labels.size()) +
                       ") × dim (" + std::to_string(dim) + ")");
}

}  // namespace

int RidgeClassifier::predict(std::span<const float> feature) const {
    UPCYCLE_ASSERT(feature.size() == static_cast<std::size_t>(dim),
                   "RidgeClassifier::predict: feature size " + std::to_string(feature.size()) +
                       " != dim " + std::to_string(dim));
    const std::size_t K = static_cast<std::size_t>(classes);
    std::vector<double> score(bias.begin(), bias.end());  // [K]
    for (std::size_t d = 0; d < feature.size(); ++d) {
        const double x = feature[d];
        const double* w = &weights[d * K];
        for (std::size_t c = 0; c < K; ++c) score[c] += x * w[c];
    }
    int best = 0;
    for (std::size_t c = 1; c < K; ++c)
        if (score[c] > score[static_cast<std::size_t>(best)]) best = static_cast<int>(c);
    return best;
}

RidgeClassifier fit_ridge_classifier(std::span<const float> features,
                                     std::span<const int32_t> labels, int dim, int classes,
                                     double ridge_lambda) {
    check_shapes(features, labels, dim, "fit_ridge_classifier");
    UPCYCLE_ASSERT(classes > 0, "fit_ridge_classifier: classes must be positive");
    UPCYCLE_ASSERT(!labels.empty(), "fit_ridge_classifier: no examples to fit");
    UPCYCLE_ASSERT(ridge_lambda > 0, "fit_ridge_classifier: ridge_lambda must be > 0, got " +
                                         std::to_string(ridge_lambda));
    const std::size_t n = labels.size();
    const std::size_t D = static_cast<std::size_t>(dim);
    const std::size_t K = static_cast<std::size_t>(classes);
    for (int32_t y : labels)
        UPCYCLE_ASSERT(y >= 0 && y < classes, "fit_ridge_classifier: label " + std::to_string(y) +
                                                  " outside [0, " + std::to_string(classes) + ")");

    // means and centred data, in double
    std::vector<double> x_mean(D, 0.0), y_mean(K, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t d = 0; d < D; ++d) x_mean[d] += features[i * D + d];
        y_mean[static_cast<std::size_t>(labels[i])] += 1.0;
    }
    for (double& v : x_mean) v /= static_cast<double>(n);
    for (double& v : y_mean) v /= static_cast<double>(n);
    std::vector<double> xc(n * D), yc(n * K);  // [n, D], [n, K]
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t d = 0; d < D; ++d) xc[i * D + d] = features[i * D + d] - x_mean[d];
        for (std::size_t c = 0; c < K; ++c)
            yc[i * K + c] = (static_cast<std::size_t>(labels[i]) == c ? 1.0 : 0.0) - y_mean[c];
    }
    const double shift = ridge_lambda * static_cast<double>(n);

    RidgeClassifier out;
    out.dim = dim;
    out.classes = classes;
    out.weights.assign(D * K, 0.0);
    if (n >= D) {
        // primal: (Xcᵀ Xc + λnI) W = Xcᵀ Yc, a D×D system
        std::vector<double> a(D * D, 0.0);  // lower triangle of Xcᵀ Xc
        for (std::size_t i = 0; i < n; ++i) {
            const double* x = &xc[i * D];
            const double* y = &yc[i * K];
            for (std::size_t r = 0; r < D; ++r) {
                const double xr = x[r];
                double* ar = &a[r * D];
                for (std::size_t s = 0; s <= r; ++s) ar[s] += xr * x[s];
                double* wr = &out.weights[r * K];
                for (std::size_t c = 0; c < K; ++c) wr[c] += xr * y[c];
            }
        }
        for (std::size_t r = 0; r < D; ++r) a[r * D + r] += shift;
        cholesky_factor(a, D);
        cholesky_solve(a, D, out.weights, K);
    } else {
        // dual (n < D): W = Xcᵀ Z with (Xc Xcᵀ + λnI) Z = Yc, an n×n system
        std::vector<double> g(n * n, 0.0);  // lower triangle of Xc Xcᵀ
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j <= i; ++j) {
                double v = 0;
                for (std::size_t d = 0; d < D; ++d) v += xc[i * D + d] * xc[j * D + d];
                g[i * n + j] = v;
            }
        for (std::size_t i = 0; i < n; ++i) g[i * n + i] += shift;
        std::vector<double> z = yc;  // [n, K]
        cholesky_factor(g, n);
        cholesky_solve(g, n, z, K);
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t d = 0; d < D; ++d) {
                const double x = xc[i * D + d];
                double* wd = &out.weights[d * K];
                for (std::size_t c = 0; c < K; ++c) wd[c] += x * z[i * K + c];
            }
    }

    out.bias = y_mean;
    for (std::size_t d = 0; d < D; ++d)
        for (std::size_t c = 0; c < K; ++c) out.bias[c] -= x_mean[d] * out.weights[d * K + c];
    return out;
}

double classifier_accuracy(const RidgeClassifier& classifier, std::span<const float> features,
                           std::span<const int32_t> labels, int dim) {
    check_shapes(features, labels, dim, "classifier_accuracy");
    UPCYCLE_ASSERT(dim == classifier.dim, "classifier_accuracy: dim " + std::to_string(dim) +
                                              " != classifier dim " +
                                              std::to_string(classifier.dim));
    UPCYCLE_ASSERT(!labels.empty(), "classifier_accuracy: no examples");
    const std::size_t D = static_cast<std::size_t>(dim);
    int64_t right = 0;
    for (std::size_t i = 0; i < labels.size(); ++i)
        if (classifier.predict(features.subspan(i * D, D)) == labels[i]) ++right;
    return static_cast<double>(right) / static_cast<double>(labels.size());
}

std::vector<int64_t> few_shot_indices(std::span<const int32_t> pool_labels, int classes,
                                      int shots, uint64_t seed) {
    UPCYCLE_ASSERT(classes > 0, "few_shot_indices: classes must be positive");
    UPCYCLE_ASSERT(shots >= 0, "few_shot_indices: shots must be >= 0");
    std::vector<std::vector<int64_t>> members(static_cast<std::size_t>(classes));
    for (std::size_t i = 0; i < pool_labels.size(); ++i) {
        const int32_t y = pool_labels[i];
        UPCYCLE_ASSERT(y >= 0 && y < classes, "few_shot_indices: label " + std::to_string(y) +
                                                  " outside [0, " + std::to_string(classes) + ")");
        members[static_cast<std::size_t>(y)].push_back(static_cast<int64_t>(i));
    }
    Rng rng(seed);
    std::vector<int64_t> chosen;
    for (auto& m : members) {
        // partial Fisher–Yates: the first `take` entries become a uniform sample
        const std::size_t take = std::min(m.size(), static_cast<std::size_t>(shots));
        for (std::size_t j = 0; j < take; ++j) {
            const std::size_t r = j + static_cast<std::size_t>(rng.below(m.size() - j));
            std::swap(m[j], m[r]);
        }
        chosen.insert(chosen.end(), m.begin(), m.begin() + static_cast<std::ptrdiff_t>(take));
    }
    std::sort(chosen.begin(), chosen.end());
    return chosen;
}

std::vector<FewShotResult> few_shot_probe(std::span<const float> pool_features,
                                          std::span<const int32_t> pool_labels,
                                          std::span<const float> test_features,
                                          std::span<const int32_t> test_labels, int dim,
                                          int classes, const std::vector<int>& shots, int seeds,
                                          uint64_t base_seed, double ridge_lambda) {
    check_shapes(pool_features, pool_labels, dim, "few_shot_probe (pool)");
    check_shapes(test_features, test_labels, dim, "few_shot_probe (test)");
    UPCYCLE_ASSERT(seeds >= 1, "few_shot_probe: seeds must be >= 1");
    const std::size_t D = static_cast<std::size_t>(dim);
    std::vector<FewShotResult> results;
    results.reserve(shots.size());
    for (int shot : shots) {
        UPCYCLE_ASSERT(shot >= 1, "few_shot_probe: shot counts must be >= 1");
        FewShotResult r;
        r.shots = shot;
        for (int s = 0; s < seeds; ++s) {
            const std::vector<int64_t> idx = few_shot_indices(
                pool_labels, classes, shot, mix_seed(base_seed, static_cast<uint64_t>(s)));
            std::vector<float> x(idx.size() * D);  // [n, D]
            std::vector<int32_t> y(idx.size());    // [n]
            for (std::size_t i = 0; i < idx.size(); ++i) {
                const auto src = static_cast<std::size_t>(idx[i]);
                std::copy_n(pool_features.begin() + static_cast<std::ptrdiff_t>(src * D), D,
                            x.begin() + static_cast<std::ptrdiff_t>(i * D));
                y[i] = pool_labels[src];
            }
            const RidgeClassifier clf = fit_ridge_classifier(x, y, dim, classes, ridge_lambda);
            r.per_seed.push_back(classifier_accuracy(clf, test_features, test_labels, dim));
        }
        double sum = 0;
        for (double a : r.per_seed) sum += a;
        r.mean_accuracy = sum / static_cast<double>(seeds);
        if (seeds > 1) {
            double ss = 0;
            for (double a : r.per_seed) ss += (a - r.mean_accuracy) * (a - r.mean_accuracy);
            r.std_accuracy = std::sqrt(ss / static_cast<double>(seeds - 1));
        }
        results.push_back(std::move(r));
    }
    return results;
}

}  // namespace upcycle
