// The bf16 precision on the CPU backend, the specification of the CUDA backend's bf16 GEMMs:
// the rounding itself, GEMMs on rounded operands with fp32 accumulation, and a model that
// trains in it.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using cpu::round_to_bf16;

float from_bits(uint32_t bits) { return std::bit_cast<float>(bits); }

TEST(Bf16, RoundsToNearestTiesToEven) {
    EXPECT_EQ(round_to_bf16(1.0f), 1.0f);
    EXPECT_EQ(round_to_bf16(-2.5f), -2.5f);  // representable: unchanged
    // bf16 keeps 7 mantissa bits: the spacing above 1 is 2^-7
    const float ulp = std::ldexp(1.0f, -7);
    EXPECT_EQ(round_to_bf16(1.0f + 0.25f * ulp), 1.0f);              // below half: down
    EXPECT_EQ(round_to_bf16(1.0f + 0.75f * ulp), 1.0f + ulp);        // above half: up
    EXPECT_EQ(round_to_bf16(1.0f + 0.5f * ulp), 1.0f);               // tie, 1.0 is even: down
    EXPECT_EQ(round_to_bf16(1.0f + 1.5f * ulp), 1.0f + 2 * ulp);     // tie, 1+ulp is odd: up
    EXPECT_EQ(round_to_bf16(-(1.0f + 0.75f * ulp)), -(1.0f + ulp));  // sign-symmetric
    // the low 16 bits are always cleared
    Rng rng(1);
    for (int i = 0; i < 1000; ++i) {
        const float x = rng.normal() * 100.0f;
        const float r = round_to_bf16(x);
        EXPECT_EQ(std::bit_cast<uint32_t>(r) & 0xffffu, 0u);
        EXPECT_LE(std::abs(r - x), std::ldexp(std::abs(x), -8));  // within half a bf16 ulp
    }
}

TEST(Bf16, SpecialValues) {
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_EQ(round_to_bf16(inf), inf);
    EXPECT_EQ(round_to_bf16(-inf), -inf);
    EXPECT_EQ(round_to_bf16(0.0f), 0.0f);
    EXPECT_TRUE(std::signbit(round_to_bf16(-0.0f)));
    // a NaN whose payload lies only in the low bits must stay a NaN, not become an infinity
    EXPECT_TRUE(std::isnan(round_to_bf16(from_bits(0x7f800001u))));
    EXPECT_TRUE(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
    // the largest float is above bf16's largest finite value plus half an ulp: infinity
    EXPECT_EQ(round_to_bf16(std::numeric_limits<float>::max()), inf);
}

std::vector<float> random_vector(std::size_t n, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = rng.normal();
    return v;
}

std::vector<float> rounded(const std::vector<float>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = round_to_bf16(v[i]);
    return out;
}

// out[M,N] = a[M,K]·b[N,K]^T + bias in double: the exact products of the given operands.
std::vector<double> reference_forward(const std::vector<float>& a, const std::vector<float>& b,
                                      const std::vector<float>& bias, int M, int K, int N) {
    std::vector<double> out(static_cast<std::size_t>(M) * N);
    for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
            double acc = bias[n];
            for (int k = 0; k < K; ++k) acc += double(a[m * K + k]) * double(b[n * K + k]);
            out[m * N + n] = acc;
        }
    }
    return out;
}

struct Difference {
    double to_reference = 0, scale = 0;
};

Difference compare(const std::vector<float>& got, const std::vector<double>& want) {
    Difference d;
    for (std::size_t i = 0; i < got.size(); ++i) {
        d.to_reference = std::max(d.to_reference, std::abs(double(got[i]) - want[i]));
        d.scale = std::max(d.scale, std::abs(want[i]));
    }
    return d;
}

// Shapes past the serial threshold (so the tiled, threaded path runs) and ragged ones.
class Bf16Matmul : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(Bf16Matmul, ForwardIsTheFp32ProductOfRoundedOperands) {
    const auto [M, K, N] = GetParam();
    CpuBackend backend;
    const auto inp = random_vector(static_cast<std::size_t>(M) * K, 1);
    const auto weight = random_vector(static_cast<std::size_t>(N) * K, 2);
    const auto bias = random_vector(N, 3);
    Tensor t_inp = Tensor::from_host(backend, {M, K}, inp);
    Tensor t_w = Tensor::from_host(backend, {N, K}, weight);
    Tensor t_b = Tensor::from_host(backend, {N}, bias);
    Tensor out(backend, {M, N});

    backend.set_precision(Precision::BF16);
    backend.matmul_forward(out.f32(), t_inp.f32(), t_w.f32(), t_b.f32(), M, K, N);
    const auto bf16 = out.to_host();
    const Difference on_rounded =
        compare(bf16, reference_forward(rounded(inp), rounded(weight), bias, M, K, N));
    // fp32 accumulation of K products: rounding grows like √K·eps relative to the sum's scale
    EXPECT_LT(on_rounded.to_reference, 1e-5 * on_rounded.scale);

    // negative control: against the unrounded operands the error is bf16's (~2^-9 relative
    // per operand), orders of magnitude above fp32 rounding
    const Difference on_exact = compare(bf16, reference_forward(inp, weight, bias, M, K, N));
    EXPECT_GT(on_exact.to_reference, 1e-4 * on_exact.scale);

    // and FP32 precision is the plain product again
    backend.set_precision(Precision::FP32);
    backend.matmul_forward(out.f32(), t_inp.f32(), t_w.f32(), t_b.f32(), M, K, N);
    const Difference fp32 = compare(out.to_host(), reference_forward(inp, weight, bias, M, K, N));
    EXPECT_LT(fp32.to_reference, 1e-5 * fp32.scale);
}

TEST_P(Bf16Matmul, BackwardRoundsBothOperandsOfEachProduct) {
    const auto [M, K, N] = GetParam();
    CpuBackend backend;
    backend.set_precision(Precision::BF16);
    const auto inp = random_vector(static_cast<std::size_t>(M) * K, 4);
    const auto weight = random_vector(static_cast<std::size_t>(N) * K, 5);
    const auto dout = random_vector(static_cast<std::size_t>(M) * N, 6);
    Tensor t_inp = Tensor::from_host(backend, {M, K}, inp);
    Tensor t_w = Tensor::from_host(backend, {N, K}, weight);
    Tensor t_dout = Tensor::from_host(backend, {M, N}, dout);
    Tensor dinp = Tensor::zeros(backend, {M, K});
    Tensor dweight = Tensor::zeros(backend, {N, K});
    Tensor dbias = Tensor::zeros(backend, {N});
    backend.matmul_backward(dinp.f32(), dweight.f32(), dbias.f32(), t_dout.f32(), t_inp.f32(),
                            t_w.f32(), M, K, N);
    const auto r_inp = rounded(inp), r_w = rounded(weight), r_dout = rounded(dout);
    // dinp[M,K] = dout·W;  dweight[N,K] = doutᵀ·inp;  dbias[N] = Σ_m dout (fp32, unrounded)
    std::vector<double> want_dinp(static_cast<std::size_t>(M) * K, 0.0);
    std::vector<double> want_dweight(static_cast<std::size_t>(N) * K, 0.0);
    std::vector<double> want_dbias(N, 0.0);
    for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
            const double g = r_dout[m * N + n];
            want_dbias[n] += dout[m * N + n];
            for (int k = 0; k < K; ++k) {
                want_dinp[m * K + k] += g * r_w[n * K + k];
                want_dweight[n * K + k] += g * r_inp[m * K + k];
            }
        }
    }
    for (const auto& [got, want] :
         {std::pair{dinp.to_host(), want_dinp}, std::pair{dweight.to_host(), want_dweight},
          std::pair{dbias.to_host(), want_dbias}}) {
        const Difference d = compare(got, want);
        EXPECT_LT(d.to_reference, 1e-5 * d.scale);
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Bf16Matmul,
                         ::testing::Values(std::tuple{5, 7, 3}, std::tuple{64, 48, 96},
                                           std::tuple{130, 100, 70}));

// A tiny GPT trains in bf16: the loss falls as in fp32 and stays close to it, but the runs
// differ (the precision is really applied).
TEST(Bf16, TinyGptTrainsCloseToFp32) {
    testing::TempDir dir;
    auto run = [&](const std::string& precision) {
        RunConfig config = testing::tiny_synthetic_config();
        config.train.precision = parse_choice<Precision>(precision, "test", "train.precision");
        std::vector<double> losses;
        TrainObserver observer;
        observer.on_step = [&](const StepRecord& r) { losses.push_back(r.loss); };
        TrainOptions options;
        options.out_dir = dir / precision;
        CpuBackend backend;
        const TrainSummary summary = train(backend, config, options, observer);
        EXPECT_EQ(backend.precision(), config.train.precision);  // the trainer set it
        losses.push_back(summary.final_eval->loss);
        return losses;
    };
    const auto fp32 = run("fp32");
    const auto bf16 = run("bf16");
    ASSERT_EQ(fp32.size(), bf16.size());
    double largest = 0;
    for (std::size_t i = 0; i < fp32.size(); ++i)
        largest = std::max(largest, std::abs(bf16[i] - fp32[i]));
    EXPECT_LT(largest, 0.05);  // bf16 operands: a percent-level perturbation, not a different run
    EXPECT_GT(largest, 1e-6);  // but not the fp32 run
    EXPECT_LT(bf16.back(), bf16.front());  // validation loss after training below step 1's loss
}

}  // namespace
}  // namespace upcycle
