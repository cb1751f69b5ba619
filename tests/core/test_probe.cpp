// Few-shot linear probe: the ridge classifier solves its objective, recovers separable
// problems, the n-shot choice is exact and seeded, and random labels score at chance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/probe.h"
#include "core/rng.h"

namespace upcycle {
namespace {

// K class means: random unit vectors × radius, in D dims. [K, D]
std::vector<float> class_means(int K, int D, float radius, Rng& rng) {
    std::vector<float> means(static_cast<std::size_t>(K * D));
    for (int k = 0; k < K; ++k) {
        double norm = 0;
        for (int d = 0; d < D; ++d) {
            const float v = rng.normal();
            means[static_cast<std::size_t>(k * D + d)] = v;
            norm += static_cast<double>(v) * v;
        }
        for (int d = 0; d < D; ++d)
            means[static_cast<std::size_t>(k * D + d)] *= radius / static_cast<float>(std::sqrt(norm));
    }
    return means;
}

struct Labelled {
    std::vector<float> x;    // [n, D]
    std::vector<int32_t> y;  // [n]
};

// n points, label uniform in [0, K), x = mean[label] + sigma · noise.
Labelled sample(const std::vector<float>& means, int K, int D, int n, float sigma, Rng& rng) {
    Labelled out;
    out.x.resize(static_cast<std::size_t>(n * D));
    out.y.resize(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
        const int k = static_cast<int>(rng.below(static_cast<uint64_t>(K)));
        out.y[static_cast<std::size_t>(i)] = k;
        for (int d = 0; d < D; ++d)
            out.x[static_cast<std::size_t>(i * D + d)] =
                means[static_cast<std::size_t>(k * D + d)] + sigma * rng.normal();
    }
    return out;
}

TEST(Probe, RecoversSeparableProblemExactly) {
    const int K = 10, D = 32;
    Rng rng(11);
    const auto means = class_means(K, D, 5.0f, rng);
    const Labelled pool = sample(means, K, D, 500, 0.1f, rng);
    const Labelled test = sample(means, K, D, 1000, 0.1f, rng);

    for (int shots : {10, 1}) {
        const auto idx = few_shot_indices(pool.y, K, shots, 3);
        ASSERT_EQ(idx.size(), static_cast<std::size_t>(K * shots));
        std::vector<float> x;
        std::vector<int32_t> y;
        for (int64_t i : idx) {
            const auto s = static_cast<std::size_t>(i);
            x.insert(x.end(), pool.x.begin() + static_cast<std::ptrdiff_t>(s * D),
                     pool.x.begin() + static_cast<std::ptrdiff_t>((s + 1) * D));
            y.push_back(pool.y[s]);
        }
        const RidgeClassifier clf = fit_ridge_classifier(x, y, D, K, 1e-3);
        EXPECT_EQ(clf.weights.size(), static_cast<std::size_t>(D * K));
        EXPECT_EQ(clf.bias.size(), static_cast<std::size_t>(K));
        EXPECT_EQ(classifier_accuracy(clf, test.x, test.y, D), 1.0) << shots << "-shot";
    }

    const auto results = few_shot_probe(pool.x, pool.y, test.x, test.y, D, K, {1, 10}, 3, 7, 1e-3);
    ASSERT_EQ(results.size(), 2u);
    for (const auto& r : results) {
        EXPECT_EQ(r.mean_accuracy, 1.0) << r.shots << "-shot";
        EXPECT_EQ(r.std_accuracy, 0.0);
        EXPECT_EQ(r.per_seed.size(), 3u);
    }
    EXPECT_EQ(results[0].shots, 1);
    EXPECT_EQ(results[1].shots, 10);
}

// At the returned W, the ridge objective's gradient Xcᵀ(Xc W − Yc) + λ n W is zero, and the
// unpenalised bias makes the residuals sum to zero per class. Both the primal (n ≥ D) and
// the dual (n < D) solves are checked.
void check_ridge_optimality(int n, int D, int K, double lambda, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> x(static_cast<std::size_t>(n * D));
    std::vector<int32_t> y(static_cast<std::size_t>(n));
    for (int d = 0; d < D; ++d) {
        const float offset = 3.0f * rng.normal();  // far from zero mean: centring matters
        for (int i = 0; i < n; ++i) x[static_cast<std::size_t>(i * D + d)] = offset + rng.normal();
    }
    for (int i = 0; i < n; ++i) y[static_cast<std::size_t>(i)] = static_cast<int32_t>(i % K);

    const RidgeClassifier clf = fit_ridge_classifier(x, y, D, K, lambda);
    ASSERT_EQ(clf.dim, D);
    ASSERT_EQ(clf.classes, K);

    auto X = [&](int i, int d) { return static_cast<double>(x[static_cast<std::size_t>(i * D + d)]); };
    auto Y = [&](int i, int k) { return y[static_cast<std::size_t>(i)] == k ? 1.0 : 0.0; };
    auto W = [&](int d, int k) { return clf.weights[static_cast<std::size_t>(d * K + k)]; };
    std::vector<double> xm(static_cast<std::size_t>(D), 0.0), ym(static_cast<std::size_t>(K), 0.0);
    for (int i = 0; i < n; ++i) {
        for (int d = 0; d < D; ++d) xm[static_cast<std::size_t>(d)] += X(i, d) / n;
        for (int k = 0; k < K; ++k) ym[static_cast<std::size_t>(k)] += Y(i, k) / n;
    }
    // residual R = Xc W − Yc  [n, K]
    std::vector<double> r(static_cast<std::size_t>(n * K), 0.0);
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < K; ++k) {
            double v = -(Y(i, k) - ym[static_cast<std::size_t>(k)]);
            for (int d = 0; d < D; ++d) v += (X(i, d) - xm[static_cast<std::size_t>(d)]) * W(d, k);
            r[static_cast<std::size_t>(i * K + k)] = v;
        }
    double max_grad = 0, scale = 0, max_w = 0;
    for (int d = 0; d < D; ++d)
        for (int k = 0; k < K; ++k) {
            double g = lambda * n * W(d, k), xty = 0;
            for (int i = 0; i < n; ++i) {
                const double xc = X(i, d) - xm[static_cast<std::size_t>(d)];
                g += xc * r[static_cast<std::size_t>(i * K + k)];
                xty += xc * (Y(i, k) - ym[static_cast<std::size_t>(k)]);
            }
            max_grad = std::max(max_grad, std::abs(g));
            scale = std::max(scale, std::abs(xty));
            max_w = std::max(max_w, std::abs(W(d, k)));
        }
    EXPECT_GT(max_w, 1e-3) << "a trivial W would not be a test";
    EXPECT_LE(max_grad, 1e-8 * scale) << "n=" << n << " D=" << D;

    // bias: sum over examples of (x W + b − y) is 0 for every class
    for (int k = 0; k < K; ++k) {
        double sum = 0;
        for (int i = 0; i < n; ++i) {
            double s = clf.bias[static_cast<std::size_t>(k)] - Y(i, k);
            for (int d = 0; d < D; ++d) s += X(i, d) * W(d, k);
            sum += s;
        }
        EXPECT_NEAR(sum / n, 0.0, 1e-9) << "class " << k;
    }
}

TEST(Probe, RidgeSolutionZeroesObjectiveGradientPrimal) { check_ridge_optimality(60, 8, 4, 0.1, 1); }

TEST(Probe, RidgeSolutionZeroesObjectiveGradientDual) { check_ridge_optimality(7, 20, 3, 0.05, 2); }

TEST(Probe, SingleExamplePredictsItsClass) {
    const std::vector<float> x{1.0f, -2.0f, 0.5f};
    const std::vector<int32_t> y{2};
    const RidgeClassifier clf = fit_ridge_classifier(x, y, 3, 4, 1.0);
    EXPECT_EQ(clf.predict(std::vector<float>{-7.0f, 3.0f, 9.0f}), 2);
}

TEST(Probe, FewShotIndicesExactSeededUnique) {
    const int K = 10;
    Rng rng(5);
    std::vector<int32_t> labels;
    for (int k = 0; k < K; ++k)
        for (int j = 0; j < 20 + k; ++j) labels.push_back(k);
    for (std::size_t i = labels.size(); i > 1; --i)  // shuffle the pool
        std::swap(labels[i - 1], labels[static_cast<std::size_t>(rng.below(i))]);

    const auto a = few_shot_indices(labels, K, 5, 42);
    ASSERT_EQ(a.size(), static_cast<std::size_t>(5 * K));
    EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
    EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), a.size());
    std::vector<int> per_class(K, 0);
    for (int64_t i : a) {
        ASSERT_GE(i, 0);
        ASSERT_LT(i, static_cast<int64_t>(labels.size()));
        ++per_class[static_cast<std::size_t>(labels[static_cast<std::size_t>(i)])];
    }
    for (int k = 0; k < K; ++k) EXPECT_EQ(per_class[static_cast<std::size_t>(k)], 5) << k;

    EXPECT_EQ(few_shot_indices(labels, K, 5, 42), a);
    EXPECT_NE(few_shot_indices(labels, K, 5, 43), a);

    // a class with fewer than `shots` examples gives all it has
    const std::vector<int32_t> small{0, 1, 0, 1, 1, 1, 1, 1, 0};
    const auto b = few_shot_indices(small, 2, 5, 1);  // class 0: 3 members, class 1: 6
    ASSERT_EQ(b.size(), 8u);
    for (int64_t i : {0, 2, 8}) EXPECT_TRUE(std::count(b.begin(), b.end(), i) == 1) << i;
    EXPECT_EQ(few_shot_indices(small, 3, 2, 1).size(), 4u);  // class 2 absent: none

    // every member of a class is reachable: 1 shot from 4 members over 400 seeds
    const std::vector<int32_t> four{0, 0, 0, 0};
    std::vector<int> hits(4, 0);
    for (uint64_t s = 0; s < 400; ++s) {
        const auto c = few_shot_indices(four, 1, 1, s);
        ASSERT_EQ(c.size(), 1u);
        ++hits[static_cast<std::size_t>(c[0])];
    }
    for (int h : hits) EXPECT_GT(h, 50);  // expected 100 each
}

TEST(Probe, RandomLabelsScoreNearChance) {
    const int K = 10, D = 32, N = 1000, M = 3000;
    Rng rng(9);
    std::vector<float> pool_x(static_cast<std::size_t>(N * D)), test_x(static_cast<std::size_t>(M * D));
    std::vector<int32_t> pool_y(static_cast<std::size_t>(N)), test_y(static_cast<std::size_t>(M));
    for (float& v : pool_x) v = rng.normal();
    for (float& v : test_x) v = rng.normal();
    for (int32_t& v : pool_y) v = static_cast<int32_t>(rng.below(K));
    for (int32_t& v : test_y) v = static_cast<int32_t>(rng.below(K));

    const std::vector<int> shots{1, 5, 10};
    const auto r = few_shot_probe(pool_x, pool_y, test_x, test_y, D, K, shots, 5, 123, 1e-3);
    ASSERT_EQ(r.size(), shots.size());
    for (std::size_t s = 0; s < r.size(); ++s) {
        EXPECT_EQ(r[s].shots, shots[s]);
        ASSERT_EQ(r[s].per_seed.size(), 5u);
        double mean = 0;
        for (double a : r[s].per_seed) mean += a / 5;
        double var = 0;
        for (double a : r[s].per_seed) var += (a - mean) * (a - mean) / 4;
        EXPECT_NEAR(r[s].mean_accuracy, mean, 1e-12);
        EXPECT_NEAR(r[s].std_accuracy, std::sqrt(var), 1e-12);
        EXPECT_GT(r[s].std_accuracy, 0.0);  // seeds really choose different examples
        EXPECT_LT(r[s].mean_accuracy, 0.3) << r[s].shots << "-shot";
        EXPECT_GT(r[s].mean_accuracy, 0.03) << r[s].shots << "-shot";
    }
    // deterministic for a base seed, different for another
    const auto again = few_shot_probe(pool_x, pool_y, test_x, test_y, D, K, shots, 5, 123, 1e-3);
    const auto other = few_shot_probe(pool_x, pool_y, test_x, test_y, D, K, shots, 5, 124, 1e-3);
    for (std::size_t s = 0; s < r.size(); ++s) {
        EXPECT_EQ(again[s].per_seed, r[s].per_seed);
        EXPECT_NE(other[s].per_seed, r[s].per_seed);
    }
}

TEST(Probe, AbsentClassNeverWinsAndTiesGoLow) {
    const int K = 5, D = 6;
    Rng rng(21);
    std::vector<float> x(static_cast<std::size_t>(30 * D));
    std::vector<int32_t> y(30);
    for (float& v : x) v = rng.normal();
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<int32_t>(i % 3);  // 3, 4 absent
    const RidgeClassifier clf = fit_ridge_classifier(x, y, D, K, 0.01);
    for (int k = 3; k < K; ++k) {
        EXPECT_EQ(clf.bias[static_cast<std::size_t>(k)], 0.0);
        for (int d = 0; d < D; ++d) EXPECT_EQ(clf.weights[static_cast<std::size_t>(d * K + k)], 0.0);
    }
    for (int t = 0; t < 500; ++t) {
        std::vector<float> f(static_cast<std::size_t>(D));
        for (float& v : f) v = 20.0f * rng.normal();  // far outside the fitting data
        EXPECT_LT(clf.predict(f), 3);
    }

    RidgeClassifier tie;
    tie.dim = 2;
    tie.classes = 3;
    tie.weights.assign(6, 0.0);
    tie.bias = {0.2, 0.7, 0.7};
    EXPECT_EQ(tie.predict(std::vector<float>{1.0f, -1.0f}), 1);
    tie.bias = {0.5, 0.5, 0.5};
    EXPECT_EQ(tie.predict(std::vector<float>{1.0f, -1.0f}), 0);
    tie.weights = {0.0, 0.0, 1.0, 0.0, 0.0, 0.0};  // x₀ lifts class 2 above the tie
    EXPECT_EQ(tie.predict(std::vector<float>{1.0f, -1.0f}), 2);
}

}  // namespace
}  // namespace upcycle
