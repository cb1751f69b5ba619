// CUDA parity of the experts' GEMMs (expert_matmul_forward, expert_matmul_backward) against
// the CpuBackend (the specification), in both row layouts of core/backend.h:
//   padded (P > 0): E blocks of P rows, experts full, partly filled and empty; the CUDA
//     backend multiplies whole blocks (one strided-batched GEMM per product, nothing read
//     back), so padding rows hold inputs here too (random, finite) and the forward's padding
//     rows are unspecified: only the real rows are compared, and the CUDA padding rows must
//     be finite. The backward gets dout with zero padding rows (the contract); dinp is
//     compared on every row (padding rows receive + 0, so they keep their initial values).
//   compact (P = 0): experts back to back, some empty, and padding rows after the last
//     expert's (when a capacity dropped some); the forward must write those finite too.
// The parameters sit in one buffer at a per-expert stride: interleaved [W_e | b_e | gap]
// (stride ≠ N·K, unaligned) or all weights then all biases; the gradient buffer mirrors it
// and is compared whole, so a write outside W_e and b_e (into the gaps) fails. Gradients
// start random on both sides, so accumulation (+=) is checked.
//
// Tolerances (|cuda - cpu| ≤ atol + rtol · max|cpu| per output, parity_support.h):
//   fp32: kLongReduction (rtol 1e-4, atol 1e-6), as for matmul: cuBLAS sums in another order
//     than OpenBLAS; dbias sums in double on both sides.
//   bf16 (both backends in Precision::BF16; the CPU emulates the operand rounding):
//     rtol 1e-2, atol 1e-5. A product of two bf16 values is exact in fp32, so if cuBLAS
//     rounds its operands to nearest even like the CPU, the two differ only in summation
//     order (within kLongReduction). cuBLAS does not document the rounding of the fp32 →
//     bf16 conversion of CUBLAS_COMPUTE_32F_FAST_16BF; if it truncated instead, each operand
//     would move by < 2^-7 of itself and the outputs by ~2^-7/√3 ≈ 4.5e-3 of their typical
//     size at most (errors of random inputs partly cancel), so 1e-2 of the largest output
//     still holds, while a wrong index, stride or expert gives errors of the order of the
//     values. Negative control: the CUDA bf16 result must differ from the CPU's fp32 result
//     by more than kLongReduction, which proves that the bf16 path ran.
//
// Includes no CUDA header; without a CUDA build or a GPU every test reports SKIPPED.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"
#include "parity_support.h"

namespace upcycle {
namespace {

using namespace testing;  // parity_support.h

constexpr Tolerance kGemmBf16{1e-2, 1e-5};

// Rows grouped by expert, as a MoeRouting lays them out (core/backend.h, ExpertGroups).
struct ExpertLayout {
    int E = 0, P = 0, rows = 0;  // P > 0: padded, rows = E·P; P = 0: compact, rows ≥ offset[E]
    Ints count;                  // [E]
    Ints offset;                 // [E+1]
    std::string name;
    bool is_padding(int row) const {
        for (int e = 0; e < E; ++e) {
            const auto i = static_cast<std::size_t>(e);
            if (row >= offset[i] && row < offset[i] + count[i]) return false;
        }
        return true;
    }
};

// P > 0: padded; P = 0: compact with `trailing` padding rows after the last expert's.
ExpertLayout expert_layout(const Ints& count, int P, int trailing = 0) {
    ExpertLayout g;
    g.E = static_cast<int>(count.size());
    g.P = P;
    g.count = count;
    g.offset.assign(count.size() + 1, 0);
    for (int e = 0; e < g.E; ++e) {
        const auto i = static_cast<std::size_t>(e);
        g.offset[i + 1] = P > 0 ? (e + 1) * P : g.offset[i] + count[i];
    }
    g.rows = g.offset.back() + (P > 0 ? 0 : trailing);
    g.name = (P > 0 ? "padded P=" + std::to_string(P)
                    : "compact R=" + std::to_string(g.rows)) + " counts";
    for (int32_t c : count) g.name += " " + std::to_string(c);
    return g;
}

// Where W_e and b_e sit in one parameter buffer (the gradient buffer has the same layout).
struct ParamLayout {
    std::size_t weight_stride = 0, bias_offset = 0, bias_stride = 0, size = 0;
    std::string name;
};

constexpr std::size_t kGap = 3;  // unused floats after each expert's bias (interleaved)

// [W_0 | b_0 | gap | W_1 | b_1 | gap | …]: the stride is N·K + N + 3 (not a multiple of 4
// floats, so most experts' operands are not 16-byte aligned).
ParamLayout interleaved_params(int E, int K, int N) {
    ParamLayout p;
    p.weight_stride = elems(N, K) + elems(N) + kGap;
    p.bias_offset = elems(N, K);
    p.bias_stride = p.weight_stride;
    p.size = elems(E) * p.weight_stride;
    p.name = "interleaved";
    return p;
}

// [W_0 | W_1 | … | b_0 | b_1 | …]
ParamLayout separate_params(int E, int K, int N) {
    ParamLayout p;
    p.weight_stride = elems(N, K);
    p.bias_offset = elems(E, N, K);
    p.bias_stride = elems(N);
    p.size = p.bias_offset + elems(E, N);
    p.name = "separate";
    return p;
}

// The rows experts own, in order (what the forward specifies).
Floats real_rows(const Floats& all, const ExpertLayout& g, int width) {
    Floats real;
    for (int e = 0; e < g.E; ++e) {
        const auto i = static_cast<std::size_t>(e);
        const auto first = all.begin() + static_cast<std::ptrdiff_t>(elems(g.offset[i], width));
        const auto last = first + static_cast<std::ptrdiff_t>(elems(g.count[i], width));
        real.insert(real.end(), first, last);
    }
    return real;
}

// The gradient buffer split into its weight blocks, its bias blocks and the rest (gaps).
void add_parameter_outputs(Outputs& o, const Floats& grads, const ExpertLayout& g,
                           const ParamLayout& p, int K, int N) {
    Floats dweight, dbias, rest;
    std::vector<bool> seen(grads.size(), false);
    for (int e = 0; e < g.E; ++e) {
        const std::size_t w = static_cast<std::size_t>(e) * p.weight_stride;
        const std::size_t b = p.bias_offset + static_cast<std::size_t>(e) * p.bias_stride;
        for (std::size_t j = w; j < w + elems(N, K); ++j) {
            dweight.push_back(grads[j]);
            seen[j] = true;
        }
        for (std::size_t j = b; j < b + elems(N); ++j) {
            dbias.push_back(grads[j]);
            seen[j] = true;
        }
    }
    for (std::size_t j = 0; j < grads.size(); ++j) {
        if (!seen[j]) rest.push_back(grads[j]);
    }
    o.floats.emplace_back("dweight", std::move(dweight));
    o.floats.emplace_back("dbias", std::move(dbias));
    o.floats.emplace_back("untouched gaps", std::move(rest));
}

// The device view of g in arena d.
ExpertGroups upload_groups(DeviceArena& d, const ExpertLayout& g) {
    ExpertGroups eg;
    eg.E = g.E;
    eg.rows_per_expert = g.P;
    eg.rows = g.rows;
    eg.offset = d.upload(g.offset);
    eg.count = d.upload(g.count);
    return eg;
}

Case forward_case(Rng& rng, const ExpertLayout& g, const ParamLayout& p, int K, int N,
                  bool with_bias) {
    const Floats inp = randn(rng, elems(g.rows, K)), params = randn(rng, p.size, 0.5f);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(g.rows, N));
        const float* w = d.upload(params);
        be.expert_matmul_forward(out, d.upload(inp), w, p.weight_stride,
                                 with_bias ? w + p.bias_offset : nullptr, p.bias_stride,
                                 upload_groups(d, g), K, N);
        const Floats all = d.download(out, elems(g.rows, N));
        int32_t non_finite = 0;
        for (float x : all) non_finite += !std::isfinite(x);
        Outputs o;
        o.floats.emplace_back("out (real rows)", real_rows(all, g, N));
        o.ints.emplace_back("non-finite outputs (padding rows included)", Ints{non_finite});
        return o;
    };
}

// dout's padding rows are zero (the contract) unless zero_padding is false (the negative
// control below).
Case backward_case(Rng& rng, const ExpertLayout& g, const ParamLayout& p, int K, int N,
                   bool with_dinp, bool with_dbias, bool zero_padding = true) {
    Floats dout = randn(rng, elems(g.rows, N));
    for (int r = 0; r < g.rows; ++r) {
        if (!zero_padding || !g.is_padding(r)) continue;
        std::fill_n(dout.begin() + static_cast<std::ptrdiff_t>(elems(r, N)), N, 0.0f);
    }
    const Floats inp = randn(rng, elems(g.rows, K)), params = randn(rng, p.size, 0.5f),
                 dinp0 = randn(rng, elems(g.rows, K)), grads0 = randn(rng, p.size);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dinp = with_dinp ? d.upload(dinp0) : nullptr;
        float* grads = d.upload(grads0);
        be.expert_matmul_backward(dinp, grads, with_dbias ? grads + p.bias_offset : nullptr,
                                  d.upload(dout), d.upload(inp), d.upload(params),
                                  p.weight_stride, p.bias_stride, upload_groups(d, g), K, N);
        Outputs o;
        if (dinp) o.floats.emplace_back("dinp", d.download(dinp, elems(g.rows, K)));
        add_parameter_outputs(o, d.download(grads, p.size), g, p, K, N);
        return o;
    };
}

// ---- shapes ------------------------------------------------------------------------------

struct Kn {
    int K, N;
};
// Ragged in- and out-features (neither a multiple of 16), both ways round.
const std::vector<Kn> kFeatures = {{24, 40}, {40, 24}};

// Padded: E = 4 with two full experts, one partly filled, one empty; P = 130 (3 row chunks
// of the dbias reduction) with an expert of one row; a single expert. Compact: an empty
// expert, ragged counts and 9 trailing padding rows; every expert non-empty, no padding.
std::vector<ExpertLayout> expert_layouts() {
    return {expert_layout({16, 9, 0, 16}, 16), expert_layout({130, 77, 0, 1}, 130),
            expert_layout({5}, 7), expert_layout({5, 0, 17, 9}, 0, 9),
            expert_layout({33, 1, 64, 30}, 0)};
}

std::vector<ParamLayout> param_layouts(int E, int K, int N) {
    return {interleaved_params(E, K, N), separate_params(E, K, N)};
}

std::string case_name(const ExpertLayout& g, const ParamLayout& p, int K, int N) {
    return g.name + ", " + p.name + " params, K=" + std::to_string(K) + " N=" +
           std::to_string(N);
}

class CudaExpertMatmul : public ParityFixture {
protected:
    // Both backends in BF16: outputs within kGemmBf16 (integer outputs equal); and the output
    // named `control` further from the CPU's FP32 result than kLongReduction allows.
    void expect_bf16_parity(const Case& run, const std::string& control,
                            const std::string& what) {
        SCOPED_TRACE(what);
        cpu_.set_precision(Precision::BF16);
        cuda_->set_precision(Precision::BF16);
        const Outputs want = run(cpu_);
        const Outputs got = run(*cuda_);
        cpu_.set_precision(Precision::FP32);
        const Outputs exact = run(cpu_);
        cuda_->set_precision(Precision::FP32);
        ASSERT_EQ(want.floats.size(), got.floats.size());
        ASSERT_EQ(want.ints.size(), got.ints.size());
        for (std::size_t i = 0; i < want.floats.size(); ++i) {
            expect_close(want.floats[i].second, got.floats[i].second, kGemmBf16,
                         what + " " + want.floats[i].first);
        }
        for (std::size_t i = 0; i < want.ints.size(); ++i) {
            expect_equal(want.ints[i].second, got.ints[i].second,
                         what + " " + want.ints[i].first);
        }
        bool control_seen = false;
        for (std::size_t i = 0; i < exact.floats.size(); ++i) {
            if (exact.floats[i].first != control) continue;
            control_seen = true;
            expect_beyond(exact.floats[i].second, got.floats[i].second, kLongReduction,
                          what + " " + control +
                              ": within the fp32 tolerance of the CPU's fp32 result; did bf16 run?");
        }
        EXPECT_TRUE(control_seen) << "no output named " << control;
    }
};

// ---- fp32 --------------------------------------------------------------------------------

TEST_F(CudaExpertMatmul, Forward) {
    for (const ExpertLayout& g : expert_layouts()) {
        for (const Kn& s : kFeatures) {
            for (const ParamLayout& p : param_layouts(g.E, s.K, s.N)) {
                for (bool bias : {true, false}) {
                    expect_parity(forward_case(rng_, g, p, s.K, s.N, bias), kLongReduction,
                                  "expert_matmul_forward " + case_name(g, p, s.K, s.N) +
                                      (bias ? " bias" : " no bias"));
                }
            }
        }
    }
}

TEST_F(CudaExpertMatmul, Backward) {
    for (const ExpertLayout& g : expert_layouts()) {
        for (const Kn& s : kFeatures) {
            for (const ParamLayout& p : param_layouts(g.E, s.K, s.N)) {
                for (const auto& [with_dinp, with_dbias] :
                     {std::pair{true, true}, std::pair{false, true}, std::pair{true, false},
                      std::pair{false, false}}) {
                    expect_parity(backward_case(rng_, g, p, s.K, s.N, with_dinp, with_dbias),
                                  kLongReduction,
                                  "expert_matmul_backward " + case_name(g, p, s.K, s.N) +
                                      (with_dinp ? " dinp" : "") + (with_dbias ? " dbias" : ""));
                }
            }
        }
    }
}

// Wider shapes, as the MLP's experts have (in- or out-features 4× the other; rows in several
// 64-row chunks of the dbias reduction).
TEST_F(CudaExpertMatmul, WideShapes) {
    for (const ExpertLayout& g : {expert_layout({200, 37, 0, 200}, 200),
                                  expert_layout({200, 37, 0, 150}, 0, 13)}) {
        for (const Kn& s : {Kn{256, 64}, Kn{64, 256}}) {
            const ParamLayout p = separate_params(g.E, s.K, s.N);
            expect_parity(forward_case(rng_, g, p, s.K, s.N, true), kLongReduction,
                          "expert_matmul_forward " + case_name(g, p, s.K, s.N));
            expect_parity(backward_case(rng_, g, p, s.K, s.N, true, true), kLongReduction,
                          "expert_matmul_backward " + case_name(g, p, s.K, s.N));
        }
    }
}

// ---- bf16 --------------------------------------------------------------------------------

TEST_F(CudaExpertMatmul, Bf16) {
    for (const ExpertLayout& g :
         {expert_layout({16, 9, 0, 16}, 16), expert_layout({5, 0, 17, 9}, 0, 9)}) {
        for (const Kn& s : kFeatures) {
            const ParamLayout p = interleaved_params(g.E, s.K, s.N);
            expect_bf16_parity(forward_case(rng_, g, p, s.K, s.N, true), "out (real rows)",
                               "expert_matmul_forward bf16 " + case_name(g, p, s.K, s.N));
            expect_bf16_parity(backward_case(rng_, g, p, s.K, s.N, true, true), "dweight",
                               "expert_matmul_backward bf16 " + case_name(g, p, s.K, s.N));
        }
    }
}

// ---- determinism and the padded path's design --------------------------------------------

TEST_F(CudaExpertMatmul, BackwardIsDeterministic) {
    for (const ExpertLayout& g :
         {expert_layout({200, 37, 0, 200}, 200), expert_layout({200, 37, 0, 150}, 0)}) {
        const ParamLayout p = interleaved_params(g.E, 48, 96);
        expect_deterministic(backward_case(rng_, g, p, 48, 96, true, true),
                             "expert_matmul_backward " + case_name(g, p, 48, 96));
    }
}

// Negative control: with dout's padding rows NOT zero (outside the contract), the padded
// CUDA backward must differ from the CPU, which skips padding rows. This proves the padded
// path multiplies whole blocks, i.e. runs at static shapes without reading the counts back
// (the design: kernels/cuda/expert_matmul.cu), and that the parity tests above do exercise
// padding rows. A device-side count-aware kernel would be a legal change that fails this.
TEST_F(CudaExpertMatmul, PaddedBackwardMultipliesWholeBlocks) {
    const ExpertLayout g = expert_layout({16, 9, 0, 16}, 16);
    const ParamLayout p = separate_params(g.E, 24, 40);
    const Case run = backward_case(rng_, g, p, 24, 40, true, true, /*zero_padding=*/false);
    const Outputs want = run(cpu_);
    const Outputs got = run(*cuda_);
    ASSERT_EQ(want.floats.size(), got.floats.size());
    for (std::size_t i = 0; i < want.floats.size(); ++i) {
        const std::string& name = want.floats[i].first;
        if (name != "dweight" && name != "dbias") continue;
        expect_beyond(want.floats[i].second, got.floats[i].second, kLongReduction,
                      name + ": padding rows of dout left no trace; were the counts read back?");
    }
}

}  // namespace
}  // namespace upcycle
