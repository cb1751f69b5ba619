// CPU backend ops: forward against naive double-precision references, every backward against
// central finite differences, the accumulate convention, in-place cross-entropy, AdamW
// against hand-computed steps, and bit-identical results for 1 and 2 threads.
//
// Finite differences: L(x) = Σ dout ∘ forward(x) with a random dout; the float forward is
// evaluated and summed in double; ∂L/∂x_i ≈ (L(x + ε e_i) - L(x - ε e_i)) / 2ε, ε = 1e-2.
// An analytic gradient a passes against the estimate f when
//   |a - f| ≤ kFdTolerance · max(|a|, |f|, floor),  floor = kFdFloor · max_i |a_i| + 1e-4,
// i.e. 2% of the larger magnitude, where elements much smaller than the tensor's largest
// gradient are held to 2% of a floor at 5% of that largest gradient (float rounding in L is
// about 1e-7·Σ|dout·out|, amplified by 1/2ε, and the O(ε²) truncation error of the central
// difference both land well inside this).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fast_math.h"

namespace upcycle {
namespace {

constexpr double kFdEps = 1e-2;
constexpr double kFdTolerance = 2e-2;
constexpr double kFdFloor = 5e-2;
// Random subset size for finite differences on tensors larger than this.
constexpr std::size_t kFdMaxChecks = 40;

using Floats = std::vector<float>;

Floats random_floats(std::mt19937& rng, std::size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    Floats out(n);
    for (auto& x : out) x = dist(rng);
    return out;
}

double dot(const Floats& a, const Floats& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
    return s;
}

// Forward results against a double reference: |a - r| ≤ rtol · max(|r|, scale_floor).
void expect_close(const Floats& actual, const std::vector<double>& expected, double rtol,
                  double scale_floor, const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size()) << what;
    int failures = 0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
        const double tol = rtol * std::max(std::fabs(expected[i]), scale_floor);
        if (!(std::fabs(actual[i] - expected[i]) <= tol) && failures++ < 5) {
            ADD_FAILURE() << what << "[" << i << "]: got " << actual[i] << ", expected "
                          << expected[i];
        }
    }
    EXPECT_EQ(failures, 0) << what;
}

// Central-difference check of `analytic` = ∂loss/∂x over all elements of x, or a random
// subset of max_checks of them. loss() must re-run the forward from the current x.
void check_gradient(Floats& x, const Floats& analytic, const std::function<double()>& loss,
                    std::mt19937& rng, const std::string& what,
                    std::size_t max_checks = kFdMaxChecks) {
    ASSERT_EQ(x.size(), analytic.size()) << what;
    std::vector<std::size_t> indices(x.size());
    std::iota(indices.begin(), indices.end(), 0);
    if (indices.size() > max_checks) {
        std::shuffle(indices.begin(), indices.end(), rng);
        indices.resize(max_checks);
    }
    double amax = 0.0;
    for (float a : analytic) amax = std::max(amax, double(std::fabs(a)));
    const double floor = kFdFloor * amax + 1e-4;
    int failures = 0;
    for (std::size_t i : indices) {
        const float saved = x[i];
        x[i] = static_cast<float>(saved + kFdEps);
        const double plus = loss();
        x[i] = static_cast<float>(saved - kFdEps);
        const double minus = loss();
        x[i] = saved;
        // the actual perturbation after rounding to float
        const double step = double(static_cast<float>(saved + kFdEps)) -
                            double(static_cast<float>(saved - kFdEps));
        const double fd = (plus - minus) / step;
        const double a = analytic[i];
        const double denom = std::max({std::fabs(a), std::fabs(fd), floor});
        if (!(std::fabs(a - fd) <= kFdTolerance * denom) && failures++ < 5) {
            ADD_FAILURE() << what << "[" << i << "]: analytic " << a << ", finite difference "
                          << fd;
        }
    }
    EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << indices.size()
                           << " elements off";
}

void expect_bits_equal(const Floats& a, const Floats& b, const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

// Runs fn once with 1 OpenMP thread and once with 2, restoring the previous setting.
template <class Fn>
void with_threads(int n, Fn fn) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(n);
    fn();
    omp_set_num_threads(saved);
}

// ---- naive references ------------------------------------------------------------------

std::vector<double> ref_matmul(const Floats& inp, const Floats& w, const Floats* bias, int M,
                               int K, int N) {
    std::vector<double> out(static_cast<std::size_t>(M) * N);
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            double s = bias ? (*bias)[n] : 0.0;
            for (int k = 0; k < K; ++k) s += double(inp[m * K + k]) * w[n * K + k];
            out[m * N + n] = s;
        }
    return out;
}

struct LayerNormRef {
    std::vector<double> out, mean, rstd;
};
LayerNormRef ref_layernorm(const Floats& x, const Floats& w, const Floats& b, int N, int C) {
    LayerNormRef r;
    r.out.resize(x.size());
    for (int n = 0; n < N; ++n) {
        double mu = 0.0;
        for (int c = 0; c < C; ++c) mu += x[n * C + c];
        mu /= C;
        double var = 0.0;
        for (int c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu);
        var /= C;
        const double rs = 1.0 / std::sqrt(var + 1e-5);
        for (int c = 0; c < C; ++c) r.out[n * C + c] = (x[n * C + c] - mu) * rs * w[c] + b[c];
        r.mean.push_back(mu);
        r.rstd.push_back(rs);
    }
    return r;
}

struct AttentionRef {
    std::vector<double> out, lse;
};
AttentionRef ref_attention(const Floats& qkv, int B, int T, int C, int H, bool causal) {
    const int hs = C / H;
    AttentionRef r;
    r.out.assign(static_cast<std::size_t>(B) * T * C, 0.0);
    r.lse.assign(static_cast<std::size_t>(B) * H * T, 0.0);
    auto at = [&](int b, int t, int part, int h, int c) {
        return double(qkv[(static_cast<std::size_t>(b) * T + t) * 3 * C + part * C + h * hs + c]);
    };
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < T; ++i) {
                const int len = causal ? i + 1 : T;
                std::vector<double> s(len);
                double mx = -1e300;
                for (int j = 0; j < len; ++j) {
                    double d = 0.0;
                    for (int c = 0; c < hs; ++c) d += at(b, i, 0, h, c) * at(b, j, 1, h, c);
                    s[j] = d / std::sqrt(double(hs));
                    mx = std::max(mx, s[j]);
                }
                double sum = 0.0;
                for (double& e : s) sum += (e = std::exp(e - mx));
                r.lse[(static_cast<std::size_t>(b) * H + h) * T + i] = mx + std::log(sum);
                for (int c = 0; c < hs; ++c) {
                    double o = 0.0;
                    for (int j = 0; j < len; ++j) o += s[j] / sum * at(b, j, 2, h, c);
                    r.out[(static_cast<std::size_t>(b) * T + i) * C + h * hs + c] = o;
                }
            }
    return r;
}

double ref_gelu(double x) {
    const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
    return 0.5 * x * (1.0 + std::tanh(u));
}

class CpuOps : public ::testing::Test {
protected:
    CpuBackend cpu;
    std::mt19937 rng{20240611};
};

// ---- fast_exp ----------------------------------------------------------------------------

TEST_F(CpuOps, FastExpMatchesDoubleExp) {
    double worst = 0.0;
    for (int i = 0; i <= 2000000; ++i) {
        const float x = -87.0f + 175.0f * static_cast<float>(i) / 2000000.0f;
        const double ref = std::exp(double(x));
        worst = std::max(worst, std::fabs(cpu::fast_exp(x) - ref) / ref);
    }
    EXPECT_LT(worst, 2.5e-7);  // about 2 ulp
    EXPECT_EQ(cpu::fast_exp(-INFINITY), 0.0f);
    EXPECT_EQ(cpu::fast_exp(-200.0f), 0.0f);
    EXPECT_EQ(cpu::fast_exp(0.0f), 1.0f);
    EXPECT_TRUE(std::isinf(cpu::fast_exp(100.0f)));
}

TEST_F(CpuOps, FastLogMatchesDoubleLog) {
    double worst = 0.0;
    for (int i = 0; i <= 2000000; ++i) {
        // positive normal floats from 1e-37 to 1e37, and densely around 1
        const float x = i < 1000000 ? std::exp(-85.0f + 170.0f * static_cast<float>(i) / 1e6f)
                                    : 0.5f + static_cast<float>(i - 1000000) / 1e6f;
        const double ref = std::log(double(x));
        // absolute error near x = 1 where log(x) → 0, relative elsewhere
        worst = std::max(worst, std::fabs(cpu::fast_log(x) - ref) / std::max(std::fabs(ref), 1.0));
    }
    EXPECT_LT(worst, 2.5e-7);
    EXPECT_EQ(cpu::fast_log(1.0f), 0.0f);
}

// NaN in, NaN out: a diverged model must read as diverged. (fast_log once mapped NaN to ~89,
// so `eval` of a model with one NaN weight reported a finite loss.)
TEST_F(CpuOps, FastMathSpecialValuesFollowLibm) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    EXPECT_TRUE(std::isnan(cpu::fast_exp(nan)));
    EXPECT_TRUE(std::isnan(cpu::fast_log(nan)));
    EXPECT_TRUE(std::isnan(cpu::fast_log(-1.0f)));
    EXPECT_TRUE(std::isnan(cpu::fast_log(-INFINITY)));
    EXPECT_EQ(cpu::fast_log(0.0f), -INFINITY);
    EXPECT_EQ(cpu::fast_log(INFINITY), INFINITY);
    EXPECT_EQ(cpu::fast_exp(INFINITY), INFINITY);
}

// The same through the vectorised kernels: one NaN in a row poisons that row's outputs.
TEST_F(CpuOps, NonFiniteInputsGiveNonFiniteOutputs) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int V : {11, 256, 50304}) {
        for (int at : {0, V / 2, V - 1}) {
            const int N = 3;
            Floats logits = random_floats(rng, N * V, 3.0f), losses(N), dlogits(logits.size());
            std::vector<int32_t> targets = {1, 2, 3};
            logits[static_cast<std::size_t>(V) + at] = nan;  // row 1
            cpu.softmax_crossentropy(losses.data(), dlogits.data(), nullptr, logits.data(),
                                     targets.data(), N, V, 1.0f);
            EXPECT_TRUE(std::isfinite(losses[0])) << "V=" << V;
            EXPECT_TRUE(std::isnan(losses[1])) << "V=" << V << " NaN at " << at;
            EXPECT_TRUE(std::isfinite(losses[2])) << "V=" << V;
            logits[static_cast<std::size_t>(V) + at] = INFINITY;  // inf − inf in the softmax
            cpu.softmax_crossentropy(losses.data(), nullptr, nullptr, logits.data(),
                                     targets.data(), N, V, 1.0f);
            EXPECT_FALSE(std::isfinite(losses[1])) << "V=" << V << " +inf at " << at;
        }
    }
    Floats x = random_floats(rng, 37), out(37);
    x[5] = nan;
    x[30] = nan;
    cpu.gelu_forward(out.data(), x.data(), x.size());
    EXPECT_TRUE(std::isnan(out[5]));
    EXPECT_TRUE(std::isnan(out[30]));
    EXPECT_TRUE(std::isfinite(out[6]));

    const int B = 1, T = 9, C = 8, H = 2;
    Floats qkv = random_floats(rng, B * T * 3 * C), att(B * T * C), lse(B * H * T);
    qkv[0] = nan;  // the first token's query, head 0: its own row only (causal)
    cpu.attention_forward(att.data(), lse.data(), qkv.data(), B, T, C, H, /*causal=*/true);
    EXPECT_TRUE(std::isnan(att[0]));
    qkv[0] = 0.5f;
    qkv[C] = nan;  // the first token's key, head 0: every later query attends to it
    cpu.attention_forward(att.data(), lse.data(), qkv.data(), B, T, C, H, /*causal=*/true);
    for (int t = 0; t < T; ++t) EXPECT_TRUE(std::isnan(att[t * C])) << "query " << t;
}

// ---- memory ------------------------------------------------------------------------------

TEST_F(CpuOps, MemoryOps) {
    void* p = cpu.allocate(100);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
    Floats src = random_floats(rng, 25), back(25);
    cpu.upload(p, src.data(), 100);
    cpu.download(back.data(), p, 100);
    expect_bits_equal(src, back, "upload/download");
    void* q = cpu.allocate(100);
    cpu.copy(q, p, 100);
    cpu.download(back.data(), q, 100);
    expect_bits_equal(src, back, "copy");
    cpu.zero(q, 100);
    cpu.download(back.data(), q, 100);
    EXPECT_EQ(std::count(back.begin(), back.end(), 0.0f), 25);
    cpu.deallocate(p);
    cpu.deallocate(q);
    EXPECT_NE(cpu.describe().find("OpenBLAS"), std::string::npos) << cpu.describe();
}

TEST(BlasSetup, DescriptionAndSgemmMeasurement) {
    const std::string description = blas_description();
    EXPECT_NE(description.find("OpenBLAS"), std::string::npos) << description;
    EXPECT_NE(description.find("threads"), std::string::npos) << description;
    const double gflops = measure_sgemm_gflops(64, 48, 32, 0.01);
    EXPECT_GT(gflops, 0.0);
    EXPECT_TRUE(std::isfinite(gflops));
}

// ---- matmul ------------------------------------------------------------------------------

TEST_F(CpuOps, MatmulForwardMatchesReference) {
    struct Shape { int M, K, N; };
    for (Shape s : {Shape{33, 17, 9}, Shape{1, 1, 1}, Shape{5, 12, 7}, Shape{64, 128, 96},
                    Shape{130, 64, 200}}) {
        for (bool with_bias : {true, false}) {
            Floats inp = random_floats(rng, s.M * s.K), w = random_floats(rng, s.N * s.K),
                   bias = random_floats(rng, s.N), out(s.M * s.N, 123.0f);
            cpu.matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr,
                               s.M, s.K, s.N);
            expect_close(out, ref_matmul(inp, w, with_bias ? &bias : nullptr, s.M, s.K, s.N),
                         1e-5, std::sqrt(double(s.K)),
                         "matmul " + std::to_string(s.M) + "x" + std::to_string(s.K) + "x" +
                             std::to_string(s.N) + (with_bias ? " bias" : ""));
        }
    }
}

// Shapes large enough to take the tiled, multi-threaded GEMM path, against double sums.
TEST_F(CpuOps, MatmulBackwardMatchesReference) {
    struct Shape { int M, K, N; };
    for (Shape s : {Shape{130, 64, 200}, Shape{257, 96, 33}}) {
        const int M = s.M, K = s.K, N = s.N;
        Floats inp = random_floats(rng, M * K), w = random_floats(rng, N * K),
               dout = random_floats(rng, M * N);
        Floats dinp(inp.size()), dw(w.size()), db(N);
        cpu.matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                            M, K, N);
        std::vector<double> rdinp(dinp.size()), rdw(dw.size()), rdb(N);
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                const double d = dout[m * N + n];
                rdb[n] += d;
                for (int k = 0; k < K; ++k) {
                    rdinp[m * K + k] += d * w[n * K + k];
                    rdw[n * K + k] += d * inp[m * K + k];
                }
            }
        const std::string tag = " " + std::to_string(M) + "x" + std::to_string(K) + "x" +
                                std::to_string(N);
        // float sums of N (dinp) or M (dweight, dbias) unit-variance products
        expect_close(dinp, rdinp, 1e-5, std::sqrt(double(N)), "matmul dinp" + tag);
        expect_close(dw, rdw, 1e-5, std::sqrt(double(M)), "matmul dweight" + tag);
        expect_close(db, rdb, 1e-5, std::sqrt(double(M)), "matmul dbias" + tag);
    }
}

TEST_F(CpuOps, MatmulBackwardFiniteDifferences) {
    struct Shape { int M, K, N; };
    for (Shape s : {Shape{5, 7, 3}, Shape{33, 17, 9}}) {
        Floats inp = random_floats(rng, s.M * s.K), w = random_floats(rng, s.N * s.K),
               bias = random_floats(rng, s.N), dout = random_floats(rng, s.M * s.N);
        Floats dinp(inp.size()), dw(w.size()), db(bias.size()), out(s.M * s.N);
        cpu.matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                            w.data(), s.M, s.K, s.N);
        auto loss = [&] {
            cpu.matmul_forward(out.data(), inp.data(), w.data(), bias.data(), s.M, s.K, s.N);
            return dot(out, dout);
        };
        const std::string tag = " " + std::to_string(s.M) + "x" + std::to_string(s.K) + "x" +
                                std::to_string(s.N);
        check_gradient(inp, dinp, loss, rng, "matmul dinp" + tag);
        check_gradient(w, dw, loss, rng, "matmul dweight" + tag);
        check_gradient(bias, db, loss, rng, "matmul dbias" + tag);

        // null dinp / dbias are skipped; dweight is unchanged by that
        Floats dw_only(w.size());
        cpu.matmul_backward(nullptr, dw_only.data(), nullptr, dout.data(), inp.data(), w.data(),
                            s.M, s.K, s.N);
        expect_bits_equal(dw_only, dw, "matmul dweight alone" + tag);
    }
}

// ---- embedding -----------------------------------------------------------------------------

TEST_F(CpuOps, EmbeddingForwardMatchesReference) {
    const int B = 3, T = 5, C = 20, V = 7;
    Floats wte = random_floats(rng, V * C), wpe = random_floats(rng, T * C), out(B * T * C);
    std::vector<int32_t> tokens(B * T);
    for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);
    cpu.embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    std::vector<double> ref(out.size());
    for (int n = 0; n < B * T; ++n)
        for (int c = 0; c < C; ++c)
            ref[n * C + c] = double(wte[tokens[n] * C + c]) + wpe[(n % T) * C + c];
    expect_close(out, ref, 1e-6, 1.0, "embedding forward");
}

TEST_F(CpuOps, EmbeddingBackwardFiniteDifferences) {
    const int B = 2, T = 5, C = 6, V = 4;
    Floats wte = random_floats(rng, V * C), wpe = random_floats(rng, T * C),
           dout = random_floats(rng, B * T * C), out(B * T * C);
    // repeated tokens, and token 3 never used (its gradient must stay zero)
    std::vector<int32_t> tokens = {0, 1, 0, 2, 2, 1, 1, 0, 2, 0};
    Floats dwte(wte.size()), dwpe(wpe.size());
    cpu.embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    auto loss = [&] {
        cpu.embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
        return dot(out, dout);
    };
    check_gradient(wte, dwte, loss, rng, "embedding dwte");
    check_gradient(wpe, dwpe, loss, rng, "embedding dwpe");
    for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[3 * C + c], 0.0f);
}

// ---- layernorm -----------------------------------------------------------------------------

TEST_F(CpuOps, LayerNormForwardMatchesReference) {
    struct Shape { int N, C; };
    for (Shape s : {Shape{7, 12}, Shape{1, 1}, Shape{33, 128}, Shape{5, 771}}) {
        Floats x = random_floats(rng, s.N * s.C, 2.0f), w = random_floats(rng, s.C),
               b = random_floats(rng, s.C), out(x.size()), mean(s.N), rstd(s.N);
        for (auto& v : x) v += 3.0f;  // a non-zero mean
        cpu.layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                              s.N, s.C);
        const LayerNormRef r = ref_layernorm(x, w, b, s.N, s.C);
        const std::string tag = " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C);
        expect_close(out, r.out, 2e-5, 1.0, "layernorm out" + tag);
        expect_close(mean, r.mean, 1e-5, 1.0, "layernorm mean" + tag);
        expect_close(rstd, r.rstd, 2e-5, 1.0, "layernorm rstd" + tag);
    }
}

TEST_F(CpuOps, LayerNormBackwardFiniteDifferences) {
    struct Shape { int N, C; };
    for (Shape s : {Shape{7, 12}, Shape{40, 33}}) {
        Floats x = random_floats(rng, s.N * s.C), w = random_floats(rng, s.C),
               b = random_floats(rng, s.C), dout = random_floats(rng, s.N * s.C),
               out(x.size()), mean(s.N), rstd(s.N);
        cpu.layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                              s.N, s.C);
        Floats dx(x.size()), dw(w.size()), db(b.size());
        cpu.layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), s.N, s.C);
        Floats m2(s.N), r2(s.N);
        auto loss = [&] {
            cpu.layernorm_forward(out.data(), m2.data(), r2.data(), x.data(), w.data(), b.data(),
                                  s.N, s.C);
            return dot(out, dout);
        };
        const std::string tag = " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C);
        check_gradient(x, dx, loss, rng, "layernorm dinp" + tag);
        check_gradient(w, dw, loss, rng, "layernorm dweight" + tag);
        check_gradient(b, db, loss, rng, "layernorm dbias" + tag);
    }
}

// ---- attention -----------------------------------------------------------------------------

struct AttnShape { int B, T, C, H; };

TEST_F(CpuOps, AttentionForwardMatchesReference) {
    // T=70 and T=130 span several query blocks with a ragged last one.
    for (AttnShape s : {AttnShape{2, 7, 12, 3}, AttnShape{1, 1, 4, 1}, AttnShape{1, 70, 16, 2},
                        AttnShape{2, 130, 64, 2}}) {
        for (bool causal : {true, false}) {
            Floats qkv = random_floats(rng, s.B * s.T * 3 * s.C),
                   out(s.B * s.T * s.C, 7.0f), lse(s.B * s.H * s.T, 7.0f);
            cpu.attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H, causal);
            const AttentionRef r = ref_attention(qkv, s.B, s.T, s.C, s.H, causal);
            const std::string tag = " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
                                    " H=" + std::to_string(s.H) +
                                    (causal ? " causal" : " full");
            expect_close(out, r.out, 2e-5, 1.0, "attention out" + tag);
            expect_close(lse, r.lse, 2e-6, 1.0, "attention lse" + tag);
        }
    }
}

TEST_F(CpuOps, AttentionBackwardFiniteDifferences) {
    for (AttnShape s : {AttnShape{2, 7, 12, 3}, AttnShape{1, 70, 16, 2}}) {
        for (bool causal : {true, false}) {
            Floats qkv = random_floats(rng, s.B * s.T * 3 * s.C),
                   dout = random_floats(rng, s.B * s.T * s.C), out(s.B * s.T * s.C),
                   lse(s.B * s.H * s.T), dqkv(qkv.size());
            cpu.attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H, causal);
            cpu.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(),
                                   s.B, s.T, s.C, s.H, causal);
            Floats out2(out.size()), lse2(lse.size());
            auto loss = [&] {
                cpu.attention_forward(out2.data(), lse2.data(), qkv.data(), s.B, s.T, s.C, s.H,
                                      causal);
                return dot(out2, dout);
            };
            const std::string tag = " T=" + std::to_string(s.T) + (causal ? " causal" : " full");
            // every element of the small case, a random subset of the larger one
            const std::size_t checks = qkv.size() <= 600 ? qkv.size() : kFdMaxChecks;
            check_gradient(qkv, dqkv, loss, rng, "attention dqkv" + tag, checks);
        }
    }
}

// ---- gelu --------------------------------------------------------------------------------

TEST_F(CpuOps, GeluForwardMatchesReference) {
    Floats x;
    for (int i = 0; i <= 4000; ++i) x.push_back(-10.0f + 20.0f * i / 4000.0f);
    Floats more = random_floats(rng, 100003);
    x.insert(x.end(), more.begin(), more.end());
    Floats out(x.size());
    cpu.gelu_forward(out.data(), x.data(), x.size());
    std::vector<double> ref(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) ref[i] = ref_gelu(x[i]);
    // relative to the value itself, down to 1e-6 (|gelu| < 1e-6 only deep in the left tail)
    expect_close(out, ref, 2e-6, 1e-6, "gelu");
}

TEST_F(CpuOps, GeluBackwardFiniteDifferences) {
    Floats x;
    for (int i = 0; i < 40; ++i) x.push_back(-6.0f + 12.0f * i / 39.0f);
    Floats dout = random_floats(rng, x.size()), dx(x.size()), out(x.size());
    cpu.gelu_backward(dx.data(), x.data(), dout.data(), x.size());
    auto loss = [&] {
        cpu.gelu_forward(out.data(), x.data(), x.size());
        return dot(out, dout);
    };
    check_gradient(x, dx, loss, rng, "gelu dinp");
    // and the derivative itself against the double formula on a dense grid
    Floats grid, ones;
    for (int i = 0; i <= 2000; ++i) grid.push_back(-8.0f + 16.0f * i / 2000.0f);
    ones.assign(grid.size(), 1.0f);
    Floats d(grid.size());
    cpu.gelu_backward(d.data(), grid.data(), ones.data(), grid.size());
    std::vector<double> ref(grid.size());
    for (std::size_t i = 0; i < grid.size(); ++i) {
        const double xv = grid[i], k = std::sqrt(2.0 / std::numbers::pi);
        const double u = k * (xv + 0.044715 * xv * xv * xv);
        const double th = std::tanh(u);
        ref[i] = 0.5 * (1 + th) + 0.5 * xv * (1 - th * th) * k * (1 + 3 * 0.044715 * xv * xv);
    }
    // absolute 1e-7 where the derivative crosses zero (x ≈ -0.75) and cancels
    expect_close(d, ref, 1e-5, 1e-2, "gelu derivative");
}

// ---- pointwise -------------------------------------------------------------------------------

TEST_F(CpuOps, Pointwise) {
    for (std::size_t n : {std::size_t{13}, std::size_t{100001}}) {
        Floats a = random_floats(rng, n), b = random_floats(rng, n), out(n);
        cpu.add(out.data(), a.data(), b.data(), n);
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
        Floats y = a;
        cpu.add(y.data(), y.data(), b.data(), n);  // aliasing a
        expect_bits_equal(y, out, "add in place");
        y = a;
        cpu.accumulate(y.data(), b.data(), n);
        expect_bits_equal(y, out, "accumulate");
        y = a;
        cpu.scale(y.data(), -0.75f, n);
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] * -0.75f);
    }
}

// ---- softmax + cross-entropy ---------------------------------------------------------------

TEST_F(CpuOps, SoftmaxCrossEntropyMatchesReference) {
    struct Shape { int N, V; };
    for (Shape s : {Shape{6, 11}, Shape{9, 256}, Shape{2, 50304}}) {
        Floats logits = random_floats(rng, s.N * s.V, 3.0f), losses(s.N), dlogits(logits.size());
        std::vector<int32_t> targets(s.N), argmax(s.N);
        for (auto& t : targets) t = static_cast<int32_t>(rng() % s.V);
        targets[1] = -1;  // ignored
        const float grad_scale = 0.37f;
        cpu.softmax_crossentropy(losses.data(), dlogits.data(), argmax.data(), logits.data(),
                                 targets.data(), s.N, s.V, grad_scale);
        std::vector<double> ref_loss(s.N), ref_d(logits.size());
        for (int n = 0; n < s.N; ++n) {
            const float* row = logits.data() + static_cast<std::size_t>(n) * s.V;
            const int best = static_cast<int>(std::max_element(row, row + s.V) - row);
            EXPECT_EQ(argmax[n], best);
            if (targets[n] < 0) continue;  // reference zeros
            double mx = *std::max_element(row, row + s.V), sum = 0.0;
            for (int j = 0; j < s.V; ++j) sum += std::exp(double(row[j]) - mx);
            ref_loss[n] = mx + std::log(sum) - row[targets[n]];
            for (int j = 0; j < s.V; ++j)
                ref_d[n * s.V + j] =
                    (std::exp(double(row[j]) - mx) / sum - (j == targets[n])) * grad_scale;
        }
        const std::string tag = " V=" + std::to_string(s.V);
        expect_close(losses, ref_loss, 1e-5, 1.0, "cross-entropy loss" + tag);
        expect_close(dlogits, ref_d, 1e-5, 1e-2, "cross-entropy dlogits" + tag);
        for (int j = 0; j < s.V; ++j) EXPECT_EQ(dlogits[s.V + j], 0.0f);  // ignored row
        EXPECT_EQ(losses[1], 0.0f);
    }
}

TEST_F(CpuOps, SoftmaxCrossEntropyFiniteDifferences) {
    const int N = 5, V = 9;
    const float grad_scale = 0.25f;
    Floats logits = random_floats(rng, N * V, 2.0f), losses(N), dlogits(N * V);
    std::vector<int32_t> targets = {3, -1, 0, 8, 3};
    cpu.softmax_crossentropy(losses.data(), dlogits.data(), nullptr, logits.data(),
                             targets.data(), N, V, grad_scale);
    // dlogits = grad_scale · ∂(Σ losses)/∂logits
    auto loss = [&] {
        cpu.softmax_crossentropy(losses.data(), nullptr, nullptr, logits.data(), targets.data(),
                                 N, V, grad_scale);
        double s = 0.0;
        for (float l : losses) s += grad_scale * double(l);
        return s;
    };
    check_gradient(logits, dlogits, loss, rng, "cross-entropy dlogits");
}

TEST_F(CpuOps, SoftmaxCrossEntropyInPlaceAndTies) {
    const int N = 4, V = 300;
    Floats logits = random_floats(rng, N * V), losses(N), dlogits(N * V);
    // ties for the maximum: row 0 at 5 and 17, row 2 everywhere equal
    logits[5] = logits[17] = 10.0f;
    std::fill(logits.begin() + 2 * V, logits.begin() + 3 * V, 0.5f);
    std::vector<int32_t> targets = {17, 2, -1, 299}, argmax(N), argmax2(N);
    cpu.softmax_crossentropy(losses.data(), dlogits.data(), argmax.data(), logits.data(),
                             targets.data(), N, V, 1.5f);
    EXPECT_EQ(argmax[0], 5);
    EXPECT_EQ(argmax[2], 0);
    Floats inplace = logits, losses2(N);
    cpu.softmax_crossentropy(losses2.data(), inplace.data(), argmax2.data(), inplace.data(),
                             targets.data(), N, V, 1.5f);
    expect_bits_equal(inplace, dlogits, "in-place dlogits");
    expect_bits_equal(losses2, losses, "in-place losses");
    EXPECT_EQ(argmax2, argmax);
    EXPECT_NEAR(losses[2], 0.0f, 0.0f);
}

// ---- optimizer ---------------------------------------------------------------------------------

TEST_F(CpuOps, AdamWHandComputedSteps) {
    // One parameter, lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, grad_scale 2:
    // step 1, grad 0.5 → g = 1: m = 0.1, v = 0.001, m̂ = v̂ = 1,
    //   p = 1 - 0.1·(1/(1+1e-8) + 0.01·1) = 0.899000001
    // step 2, grad -0.25 → g = -0.5: m = 0.04, v = 0.001249, m̂ = 0.04/0.19, v̂ = 0.001249/0.001999
    //   p = 0.899000001 - 0.1·(m̂/(√v̂ + 1e-8) + 0.01·0.899000001) = 0.8714672973699031
    float p = 1.0f, m = 0.0f, v = 0.0f, g = 0.5f;
    cpu.adamw_update(&p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2.0f, 1);
    EXPECT_NEAR(p, 0.899000001, 1e-6);
    EXPECT_NEAR(m, 0.1, 1e-7);
    // 1 - β2 is computed from float β2 = 0.999f, i.e. 0.00099998713: 1.3e-5 relative
    EXPECT_NEAR(v, 0.001, 3e-8);
    g = -0.25f;
    cpu.adamw_update(&p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2.0f, 2);
    EXPECT_NEAR(p, 0.8714672973699031, 1e-6);
    EXPECT_NEAR(m, 0.04, 1e-7);
    EXPECT_NEAR(v, 0.001249, 3e-8);
}

TEST_F(CpuOps, AdamWMatchesReferenceOnManyParameters) {
    const std::size_t n = 50001;  // large enough for the parallel path, odd length
    Floats p = random_floats(rng, n), m(n), v(n);
    std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
    const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, gs = 0.5;
    for (int step = 1; step <= 3; ++step) {
        Floats g = random_floats(rng, n);
        cpu.adamw_update(p.data(), g.data(), m.data(), v.data(), n, float(lr), float(b1),
                         float(b2), float(eps), float(wd), float(gs), step);
        for (std::size_t i = 0; i < n; ++i) {
            const double gi = g[i] * gs;
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            const double mh = rm[i] / (1 - std::pow(b1, step));
            const double vh = rv[i] / (1 - std::pow(b2, step));
            rp[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * rp[i]);
        }
    }
    expect_close(p, rp, 1e-5, 1.0, "adamw params");
    // m and v in float, with float betas (1 - 0.95f is 1.9e-8 off 0.05 relative to it)
    expect_close(m, rm, 1e-5, 1e-2, "adamw m");
    expect_close(v, rv, 2e-5, 1e-2, "adamw v");
}

// ---- sum of squares -----------------------------------------------------------------------------

TEST_F(CpuOps, SumSquaresMatchesDouble) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000},
                          std::size_t{1234567}}) {
        Floats x = random_floats(rng, n, 3.0f);
        double ref = 0.0;
        for (float f : x) ref += double(f) * f;
        EXPECT_NEAR(cpu.sum_squares(x.data(), n), ref, 1e-12 * std::max(ref, 1.0)) << n;
    }
}

// ---- accumulate convention ----------------------------------------------------------------------

// Every backward adds to its gradient buffers: starting from g0 gives g0 + (gradient from 0).
TEST_F(CpuOps, BackwardsAccumulate) {
    auto expect_accumulates = [&](const Floats& from_zero, const Floats& g0, const Floats& got,
                                  const std::string& what) {
        std::vector<double> expected(g0.size());
        for (std::size_t i = 0; i < g0.size(); ++i) expected[i] = double(g0[i]) + from_zero[i];
        expect_close(got, expected, 1e-5, 1.0, what);
    };
    // matmul
    {
        const int M = 33, K = 17, N = 9;
        Floats inp = random_floats(rng, M * K), w = random_floats(rng, N * K),
               dout = random_floats(rng, M * N);
        Floats dx(inp.size()), dw(w.size()), db(N);
        cpu.matmul_backward(dx.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                            M, K, N);
        Floats dx0 = random_floats(rng, dx.size()), dw0 = random_floats(rng, dw.size()),
               db0 = random_floats(rng, N);
        Floats dx1 = dx0, dw1 = dw0, db1 = db0;
        cpu.matmul_backward(dx1.data(), dw1.data(), db1.data(), dout.data(), inp.data(),
                            w.data(), M, K, N);
        expect_accumulates(dx, dx0, dx1, "matmul dinp +=");
        expect_accumulates(dw, dw0, dw1, "matmul dweight +=");
        expect_accumulates(db, db0, db1, "matmul dbias +=");
    }
    // embedding
    {
        const int B = 2, T = 5, C = 6;
        std::vector<int32_t> tokens = {0, 1, 0, 2, 2, 1, 1, 0, 2, 0};
        Floats dout = random_floats(rng, B * T * C), dwte(3 * C), dwpe(T * C);
        cpu.embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
        Floats a0 = random_floats(rng, dwte.size()), p0 = random_floats(rng, dwpe.size());
        Floats a1 = a0, p1 = p0;
        cpu.embedding_backward(a1.data(), p1.data(), dout.data(), tokens.data(), B, T, C);
        expect_accumulates(dwte, a0, a1, "embedding dwte +=");
        expect_accumulates(dwpe, p0, p1, "embedding dwpe +=");
    }
    // layernorm
    {
        const int N = 40, C = 33;
        Floats x = random_floats(rng, N * C), w = random_floats(rng, C), b = random_floats(rng, C),
               dout = random_floats(rng, N * C), out(N * C), mean(N), rstd(N);
        cpu.layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                              N, C);
        Floats dx(x.size()), dw(C), db(C);
        cpu.layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), N, C);
        Floats dx0 = random_floats(rng, dx.size()), dw0 = random_floats(rng, C),
               db0 = random_floats(rng, C);
        Floats dx1 = dx0, dw1 = dw0, db1 = db0;
        cpu.layernorm_backward(dx1.data(), dw1.data(), db1.data(), dout.data(), x.data(),
                               w.data(), mean.data(), rstd.data(), N, C);
        expect_accumulates(dx, dx0, dx1, "layernorm dinp +=");
        expect_accumulates(dw, dw0, dw1, "layernorm dweight +=");
        expect_accumulates(db, db0, db1, "layernorm dbias +=");
    }
    // attention, gelu
    for (bool causal : {true, false}) {
        const int B = 2, T = 70, C = 16, H = 2;
        Floats qkv = random_floats(rng, B * T * 3 * C), dout = random_floats(rng, B * T * C),
               out(B * T * C), lse(B * H * T);
        cpu.attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H, causal);
        Floats d(qkv.size());
        cpu.attention_backward(d.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                               C, H, causal);
        Floats d0 = random_floats(rng, d.size()), d1 = d0;
        cpu.attention_backward(d1.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                               C, H, causal);
        expect_accumulates(d, d0, d1, causal ? "attention dqkv += causal" : "attention dqkv +=");
    }
    {
        Floats x = random_floats(rng, 1000), dout = random_floats(rng, 1000), d(1000);
        cpu.gelu_backward(d.data(), x.data(), dout.data(), x.size());
        Floats d0 = random_floats(rng, 1000), d1 = d0;
        cpu.gelu_backward(d1.data(), x.data(), dout.data(), x.size());
        expect_accumulates(d, d0, d1, "gelu dinp +=");
    }
}

// ---- determinism: 1 thread and 2 threads give the same bits ---------------------------------

TEST_F(CpuOps, ResultsIndependentOfThreadCount) {
    // matmul: the GEMMs (tiled by shape, not by thread count) and dbias
    {
        const int M = 300, K = 40, N = 100;
        Floats inp = random_floats(rng, M * K), w = random_floats(rng, N * K),
               bias = random_floats(rng, N), dout = random_floats(rng, M * N);
        Floats out[2], dinp[2], dw[2], db[2];
        for (int r = 0; r < 2; ++r) {
            out[r].resize(M * N);
            dinp[r].assign(M * K, 0.0f);
            dw[r].assign(N * K, 0.0f);
            db[r].assign(N, 0.0f);
            with_threads(r + 1, [&] {
                cpu.matmul_forward(out[r].data(), inp.data(), w.data(), bias.data(), M, K, N);
                cpu.matmul_backward(dinp[r].data(), dw[r].data(), db[r].data(), dout.data(),
                                    inp.data(), w.data(), M, K, N);
            });
        }
        expect_bits_equal(out[0], out[1], "matmul out");
        expect_bits_equal(dinp[0], dinp[1], "matmul dinp");
        expect_bits_equal(dw[0], dw[1], "matmul dweight");
        expect_bits_equal(db[0], db[1], "matmul dbias");
    }
    // layernorm forward + backward
    {
        const int N = 300, C = 40;
        Floats x = random_floats(rng, N * C), w = random_floats(rng, C), b = random_floats(rng, C),
               dout = random_floats(rng, N * C);
        Floats out[2], dx[2], dw[2], db[2];
        for (int r = 0; r < 2; ++r) {
            out[r].resize(N * C);
            dx[r].resize(N * C);
            dw[r].resize(C);
            db[r].resize(C);
            Floats mean(N), rstd(N);
            with_threads(r + 1, [&] {
                cpu.layernorm_forward(out[r].data(), mean.data(), rstd.data(), x.data(), w.data(),
                                      b.data(), N, C);
                cpu.layernorm_backward(dx[r].data(), dw[r].data(), db[r].data(), dout.data(),
                                       x.data(), w.data(), mean.data(), rstd.data(), N, C);
            });
        }
        expect_bits_equal(out[0], out[1], "layernorm out");
        expect_bits_equal(dx[0], dx[1], "layernorm dinp");
        expect_bits_equal(dw[0], dw[1], "layernorm dweight");
        expect_bits_equal(db[0], db[1], "layernorm dbias");
    }
    // embedding backward
    {
        const int B = 4, T = 50, C = 48, V = 10;
        std::vector<int32_t> tokens(B * T);
        for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);
        Floats dout = random_floats(rng, B * T * C);
        Floats dwte[2], dwpe[2];
        for (int r = 0; r < 2; ++r) {
            dwte[r].assign(V * C, 0.5f);
            dwpe[r].assign(T * C, 0.25f);
            with_threads(r + 1, [&] {
                cpu.embedding_backward(dwte[r].data(), dwpe[r].data(), dout.data(), tokens.data(),
                                       B, T, C);
            });
        }
        expect_bits_equal(dwte[0], dwte[1], "embedding dwte");
        expect_bits_equal(dwpe[0], dwpe[1], "embedding dwpe");
    }
    // attention forward + backward
    for (bool causal : {true, false}) {
        const int B = 2, T = 100, C = 32, H = 2;
        Floats qkv = random_floats(rng, B * T * 3 * C), dout = random_floats(rng, B * T * C);
        Floats out[2], lse[2], dqkv[2];
        for (int r = 0; r < 2; ++r) {
            out[r].resize(B * T * C);
            lse[r].resize(B * H * T);
            dqkv[r].assign(qkv.size(), 0.0f);
            with_threads(r + 1, [&] {
                cpu.attention_forward(out[r].data(), lse[r].data(), qkv.data(), B, T, C, H,
                                      causal);
                cpu.attention_backward(dqkv[r].data(), dout.data(), qkv.data(), out[r].data(),
                                       lse[r].data(), B, T, C, H, causal);
            });
        }
        expect_bits_equal(out[0], out[1], "attention out");
        expect_bits_equal(lse[0], lse[1], "attention lse");
        expect_bits_equal(dqkv[0], dqkv[1], "attention dqkv");
    }
    // sum of squares
    {
        Floats x = random_floats(rng, 200001);
        double s[2];
        for (int r = 0; r < 2; ++r)
            with_threads(r + 1, [&] { s[r] = cpu.sum_squares(x.data(), x.size()); });
        EXPECT_EQ(std::bit_cast<uint64_t>(s[0]), std::bit_cast<uint64_t>(s[1]));
    }
}

}  // namespace
}  // namespace upcycle
