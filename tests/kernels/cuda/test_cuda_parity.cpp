// CUDA backend parity: every op of core/backend.h runs on the CpuBackend (the specification)
// and on the CUDA backend with the same random inputs, forward and backward, over ragged
// shapes; backward ops start from pre-filled random gradients on both sides, so accumulation
// (+=) is checked rather than overwrite; forward outputs start as NaN, so an element the
// CUDA op forgets to write fails. A second group checks that CUDA results are bit-identical
// from one run to the next (no float atomics, fixed reduction orders).
//
// This file includes no CUDA header and is compiled in every build: it reaches the GPU only
// through the Backend interface (make_backend("cuda")); without a CUDA build or a GPU every
// test reports SKIPPED, except the check of this file's own MoE slot-layout generator
// (SlotLayouts), which needs no GPU. The shared machinery is in parity_support.h.
//
// Tolerances, per output tensor: |cuda - cpu| ≤ atol + rtol · max|cpu|  (magnitude-scaled):
//   exact            rtol 0     rearrangements (gather_rows, patch rows, class-token gather),
//                               and every integer output (argmax) — compared for equality
//   pointwise        rtol 1e-6  single adds/multiplies (add, accumulate, scale, embedding and
//                               token assembly, scatters, sums over a few rows)
//   transcendental   rtol 1e-5  GELU (tanh/exp implementations differ by a few ulp)
//   reduction        rtol 1e-5, atol 1e-7   layernorm, softmax cross-entropy, embedding
//                               backward, MoE combine and its backward
//   long reduction   rtol 1e-4, atol 1e-6   GEMMs (cuBLAS, other summation order than
//                               OpenBLAS) and attention (K- and T-long dot products)
//   adamw            rtol 1e-6  params, m and v after one step
//   sum_squares      |cuda - cpu| ≤ 1e-12 · cpu (both sum in double, in different orders)
//   bf16 attention   rtol 1e-2 to 5e-2: bf16 operands against the CPU's fp32 (see the
//                               section "attention in bf16 precision" for the reasoning)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "parity_support.h"

namespace upcycle {
namespace {

using namespace testing;  // parity_support.h: Case, DeviceArena, tolerances, the fixture

constexpr Tolerance kAdamW{1e-6, 0.0};
constexpr double kSumSquaresRtol = 1e-12;

class CudaParity : public ParityFixture {};

// ---- op cases: host inputs drawn once, then the same call on any backend -----------------

Case matmul_forward_case(Rng& rng, int M, int K, int N, bool with_bias) {
    const Floats inp = randn(rng, elems(M, K)), weight = randn(rng, elems(N, K)),
                 bias = randn(rng, elems(N));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(M, N));
        be.matmul_forward(out, d.upload(inp), d.upload(weight),
                          with_bias ? d.upload(bias) : nullptr, M, K, N);
        return Outputs{{{"out", d.download(out, elems(M, N))}}, {}};
    };
}

Case matmul_backward_case(Rng& rng, int M, int K, int N, bool with_dinp, bool with_dbias) {
    const Floats dout = randn(rng, elems(M, N)), inp = randn(rng, elems(M, K)),
                 weight = randn(rng, elems(N, K)), dinp0 = randn(rng, elems(M, K)),
                 dweight0 = randn(rng, elems(N, K)), dbias0 = randn(rng, elems(N));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dinp = with_dinp ? d.upload(dinp0) : nullptr;
        float* dweight = d.upload(dweight0);
        float* dbias = with_dbias ? d.upload(dbias0) : nullptr;
        be.matmul_backward(dinp, dweight, dbias, d.upload(dout), d.upload(inp), d.upload(weight),
                           M, K, N);
        Outputs o;
        if (dinp) o.floats.emplace_back("dinp", d.download(dinp, elems(M, K)));
        o.floats.emplace_back("dweight", d.download(dweight, elems(N, K)));
        if (dbias) o.floats.emplace_back("dbias", d.download(dbias, elems(N)));
        return o;
    };
}

Case embedding_forward_case(Rng& rng, int B, int T, int C, int V) {
    const Ints tokens = random_ints(rng, elems(B, T), V);
    const Floats wte = randn(rng, elems(V, C)), wpe = randn(rng, elems(T, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(B, T, C));
        be.embedding_forward(out, d.upload(tokens), d.upload(wte), d.upload(wpe), B, T, C);
        return Outputs{{{"out", d.download(out, elems(B, T, C))}}, {}};
    };
}

// Tokens drawn from [0, V) with half of them 0, so some rows collect many positions.
Case embedding_backward_case(Rng& rng, int B, int T, int C, int V) {
    Ints tokens = random_ints(rng, elems(B, T), V);
    for (std::size_t i = 0; i < tokens.size(); i += 2) tokens[i] = 0;
    const Floats dout = randn(rng, elems(B, T, C)), dwte0 = randn(rng, elems(V, C)),
                 dwpe0 = randn(rng, elems(T, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dwte = d.upload(dwte0);
        float* dwpe = d.upload(dwpe0);
        be.embedding_backward(dwte, dwpe, d.upload(dout), d.upload(tokens), B, T, C);
        return Outputs{{{"dwte", d.download(dwte, elems(V, C))},
                        {"dwpe", d.download(dwpe, elems(T, C))}},
                       {}};
    };
}

// Rows with a common offset, so the variance is small against the mean squared.
Case layernorm_forward_case(Rng& rng, int N, int C) {
    const Floats inp = randn(rng, elems(N, C), 2.0f, 3.0f), weight = randn(rng, elems(C)),
                 bias = randn(rng, elems(C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(N, C));
        float* mean = d.outputs(elems(N));
        float* rstd = d.outputs(elems(N));
        be.layernorm_forward(out, mean, rstd, d.upload(inp), d.upload(weight), d.upload(bias), N,
                             C);
        return Outputs{{{"out", d.download(out, elems(N, C))},
                        {"mean", d.download(mean, elems(N))},
                        {"rstd", d.download(rstd, elems(N))}},
                       {}};
    };
}

// Both backends get the same saved statistics (the CPU forward's), so only the backward is
// compared.
Case layernorm_backward_case(Rng& rng, int N, int C) {
    const Floats inp = randn(rng, elems(N, C), 2.0f, 3.0f), weight = randn(rng, elems(C)),
                 bias = randn(rng, elems(C)), dout = randn(rng, elems(N, C)),
                 dinp0 = randn(rng, elems(N, C)), dweight0 = randn(rng, elems(C)),
                 dbias0 = randn(rng, elems(C));
    Floats out(elems(N, C)), mean(elems(N)), rstd(elems(N));
    CpuBackend reference;
    reference.layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(),
                                bias.data(), N, C);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dinp = d.upload(dinp0);
        float* dweight = d.upload(dweight0);
        float* dbias = d.upload(dbias0);
        be.layernorm_backward(dinp, dweight, dbias, d.upload(dout), d.upload(inp),
                              d.upload(weight), d.upload(mean), d.upload(rstd), N, C);
        return Outputs{{{"dinp", d.download(dinp, elems(N, C))},
                        {"dweight", d.download(dweight, elems(C))},
                        {"dbias", d.download(dbias, elems(C))}},
                       {}};
    };
}

Case attention_forward_case(Rng& rng, int B, int T, int C, int H, bool causal) {
    const Floats qkv = randn(rng, elems(B, T, 3 * C), 1.5f);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(B, T, C));
        float* lse = d.outputs(elems(B, H, T));
        be.attention_forward(out, lse, d.upload(qkv), B, T, C, H, causal);
        return Outputs{{{"out", d.download(out, elems(B, T, C))},
                        {"lse", d.download(lse, elems(B, H, T))}},
                       {}};
    };
}

// Both backends get the CPU forward's out and lse.
Case attention_backward_case(Rng& rng, int B, int T, int C, int H, bool causal) {
    const Floats qkv = randn(rng, elems(B, T, 3 * C), 1.5f), dout = randn(rng, elems(B, T, C)),
                 dqkv0 = randn(rng, elems(B, T, 3 * C));
    Floats out(elems(B, T, C)), lse(elems(B, H, T));
    CpuBackend reference;
    reference.attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H, causal);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dqkv = d.upload(dqkv0);
        be.attention_backward(dqkv, d.upload(dout), d.upload(qkv), d.upload(out), d.upload(lse),
                              B, T, C, H, causal);
        return Outputs{{{"dqkv", d.download(dqkv, elems(B, T, 3 * C))}}, {}};
    };
}

Case gelu_forward_case(Rng& rng, int n) {
    const Floats inp = randn(rng, elems(n), 3.0f);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(n));
        be.gelu_forward(out, d.upload(inp), elems(n));
        return Outputs{{{"out", d.download(out, elems(n))}}, {}};
    };
}

Case gelu_backward_case(Rng& rng, int n) {
    const Floats inp = randn(rng, elems(n), 3.0f), dout = randn(rng, elems(n)),
                 dinp0 = randn(rng, elems(n));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dinp = d.upload(dinp0);
        be.gelu_backward(dinp, d.upload(inp), d.upload(dout), elems(n));
        return Outputs{{{"dinp", d.download(dinp, elems(n))}}, {}};
    };
}

enum class AddAlias { None, OutIsA, OutIsB };

Case add_case(Rng& rng, int n, AddAlias alias) {
    const Floats a = randn(rng, elems(n)), b = randn(rng, elems(n));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* pa = d.upload(a);
        float* pb = d.upload(b);
        float* out = alias == AddAlias::OutIsA ? pa
                     : alias == AddAlias::OutIsB ? pb
                                                 : d.outputs(elems(n));
        be.add(out, pa, pb, elems(n));
        return Outputs{{{"out", d.download(out, elems(n))}}, {}};
    };
}

Case accumulate_case(Rng& rng, int n) {
    const Floats y0 = randn(rng, elems(n)), x = randn(rng, elems(n));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* y = d.upload(y0);
        be.accumulate(y, d.upload(x), elems(n));
        return Outputs{{{"y", d.download(y, elems(n))}}, {}};
    };
}

Case scale_case(Rng& rng, int n, float s) {
    const Floats x0 = randn(rng, elems(n));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* x = d.upload(x0);
        be.scale(x, s, elems(n));
        return Outputs{{{"x", d.download(x, elems(n))}}, {}};
    };
}

enum class CeMode { Separate, InPlace, LossOnly };

// Logits without near-ties: each row's largest logit is 1 above the rest. If N > 2, row 2
// is an exact tie (all equal), whose argmax must be index 0 on both. Every third row
// (n % 3 == 1) is ignored (target -1).
Case softmax_crossentropy_case(Rng& rng, int N, int V, CeMode mode) {
    Floats logits = randn(rng, elems(N, V), 2.0f);
    Ints targets = random_ints(rng, elems(N), V);
    for (int n = 0; n < N; ++n) {
        float* row = logits.data() + elems(n, V);
        if (n == 2) {
            std::fill(row, row + V, 0.5f);
            continue;
        }
        const int top = static_cast<int>(rng.below(static_cast<uint64_t>(V)));
        row[top] = *std::max_element(row, row + V) + 1.0f;
        if (n % 3 == 1) targets[n] = -1;
    }
    const float grad_scale = 1.0f / static_cast<float>(N);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* plogits = d.upload(logits);
        float* losses = d.outputs(elems(N));
        float* dlogits = mode == CeMode::Separate ? d.outputs(elems(N, V))
                         : mode == CeMode::InPlace ? plogits
                                                   : nullptr;
        int32_t* argmax = mode == CeMode::LossOnly ? nullptr : d.int_outputs(elems(N));
        be.softmax_crossentropy(losses, dlogits, argmax, plogits, d.upload(targets), N, V,
                                grad_scale);
        Outputs o;
        o.floats.emplace_back("losses", d.download(losses, elems(N)));
        if (dlogits) o.floats.emplace_back("dlogits", d.download(dlogits, elems(N, V)));
        if (argmax) o.ints.emplace_back("argmax", d.download(argmax, elems(N)));
        return o;
    };
}

// ---- MoE slot layouts --------------------------------------------------------------------
//
// The dispatch side of a routing decision, as moe_route leaves it (core/backend.h,
// MoeRouting): token n owns S slots; slot_row[n,s] is the row carrying the slot or −1
// (dropped or empty), slot_weight[n,s] its combine weight (0 where slot_row = −1), and
// row_token[r] the token of row r or −1 (padding). Rows are grouped by expert, in token
// order within one, and every row is carried by at most one slot. Drawn here directly, so
// these tests depend on no router.
struct SlotLayout {
    std::string name;
    int N = 0, S = 0, P = 0, rows = 0;  // P > 0: padded; 0: compact
    Ints slot_row;       // [N,S]
    Floats slot_weight;  // [N,S]
    Ints row_token;      // [rows]

    int tokens_without_slot() const {
        int count = 0;
        for (int n = 0; n < N; ++n) {
            const auto first = slot_row.begin() + static_cast<std::ptrdiff_t>(elems(n, S));
            count += std::all_of(first, first + S, [](int32_t row) { return row < 0; });
        }
        return count;
    }
};

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Rows for the slots' experts (slot_expert[n,s], −1 = no row), token by token so that each
// expert's rows come in token order. P > 0: padded, expert e's rows start at e·P (the rest of
// its block is padding); P = 0: compact, N·S rows, the experts' rows back to back and the
// rest padding.
SlotLayout place_rows(Rng& rng, std::string name, int N, int S, int E, int P,
                      const Ints& slot_expert) {
    SlotLayout l;
    l.N = N;
    l.S = S;
    l.P = P;
    std::vector<int> count(static_cast<std::size_t>(E), 0), next(static_cast<std::size_t>(E));
    for (int32_t e : slot_expert) {
        if (e >= 0) ++count[static_cast<std::size_t>(e)];
    }
    int first = 0;
    for (int e = 0; e < E; ++e) {
        next[static_cast<std::size_t>(e)] = P > 0 ? e * P : first;
        first += count[static_cast<std::size_t>(e)];
    }
    l.rows = P > 0 ? E * P : N * S;
    l.row_token.assign(static_cast<std::size_t>(l.rows), -1);
    l.slot_row.assign(elems(N, S), -1);
    l.slot_weight.assign(elems(N, S), 0.0f);
    for (int n = 0; n < N; ++n) {
        for (int s = 0; s < S; ++s) {
            const std::size_t slot = elems(n, S) + static_cast<std::size_t>(s);
            const int32_t e = slot_expert[slot];
            if (e < 0) continue;
            const int row = next[static_cast<std::size_t>(e)]++;
            l.slot_row[slot] = row;
            l.row_token[static_cast<std::size_t>(row)] = n;
            l.slot_weight[slot] = 0.1f + rng.uniform();
        }
    }
    l.name = name + " " + shape_name({N, S}) + " E=" + std::to_string(E) +
             (P > 0 ? " P=" + std::to_string(P) : " compact") + " R=" + std::to_string(l.rows);
    return l;
}

// Top-k (token choice), S = k: every token picks k distinct experts of E in rank order; rank
// by rank, each pick is dropped with probability `drop` or when its expert already holds
// `capacity` rows (capacity 0: no limit). P > 0 (P ≥ capacity): padded rows; P = 0: compact.
SlotLayout topk_layout(Rng& rng, int N, int E, int k, int capacity, int P, float drop) {
    Ints picks(elems(N, k));
    for (int n = 0; n < N; ++n) {
        Ints experts(static_cast<std::size_t>(E));
        for (int e = 0; e < E; ++e) experts[static_cast<std::size_t>(e)] = e;
        for (int i = E - 1; i > 0; --i) {  // Fisher–Yates
            const auto j = static_cast<std::size_t>(rng.below(static_cast<uint64_t>(i) + 1));
            std::swap(experts[static_cast<std::size_t>(i)], experts[j]);
        }
        std::copy(experts.begin(), experts.begin() + k,
                  picks.begin() + static_cast<std::ptrdiff_t>(elems(n, k)));
    }
    Ints slot_expert(elems(N, k), -1);
    std::vector<int> held(static_cast<std::size_t>(E), 0);
    for (int r = 0; r < k; ++r) {
        for (int n = 0; n < N; ++n) {
            const std::size_t slot = elems(n, k) + static_cast<std::size_t>(r);
            const int32_t e = picks[slot];
            if (rng.uniform() < drop ||
                (capacity > 0 && held[static_cast<std::size_t>(e)] >= capacity)) {
                continue;
            }
            ++held[static_cast<std::size_t>(e)];
            slot_expert[slot] = e;
        }
    }
    return place_rows(rng, "topk", N, k, E, P, slot_expert);
}

// Expert choice, S = E: every expert picks `capacity` distinct tokens at random; a token's
// slots list the experts that picked it in ascending order, then empty slots (−1). Tokens
// no expert picked have no slot. Padded, P ≥ capacity.
SlotLayout expert_choice_layout(Rng& rng, int N, int E, int capacity, int P) {
    Ints slot_expert(elems(N, E), -1);
    std::vector<int> filled(static_cast<std::size_t>(N), 0);
    Ints tokens(static_cast<std::size_t>(N));
    for (int e = 0; e < E; ++e) {
        for (int n = 0; n < N; ++n) tokens[static_cast<std::size_t>(n)] = n;
        for (int i = 0; i < capacity; ++i) {  // a random prefix by partial Fisher–Yates
            const auto j = static_cast<std::size_t>(i) +
                           static_cast<std::size_t>(rng.below(static_cast<uint64_t>(N - i)));
            std::swap(tokens[static_cast<std::size_t>(i)], tokens[j]);
            const int32_t n = tokens[static_cast<std::size_t>(i)];
            const int slot = filled[static_cast<std::size_t>(n)]++;
            slot_expert[elems(n, E) + static_cast<std::size_t>(slot)] = e;
        }
    }
    return place_rows(rng, "expert_choice", N, E, E, P, slot_expert);
}

Case gather_rows_case(Rng& rng, const SlotLayout& l, int C) {
    const int N = l.N, R = l.rows;
    const Floats inp = randn(rng, elems(N, C));
    const Ints row_token = l.row_token;
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(R, C));
        be.gather_rows(out, d.upload(inp), d.upload(row_token), R, C);
        return Outputs{{{"out", d.download(out, elems(R, C))}}, {}};
    };
}

Case gather_rows_backward_case(Rng& rng, const SlotLayout& l, int C) {
    const int N = l.N, S = l.S, R = l.rows;
    const Floats dout = randn(rng, elems(R, C)), dinp0 = randn(rng, elems(N, C));
    const Ints slot_row = l.slot_row;
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dinp = d.upload(dinp0);
        be.gather_rows_backward(dinp, d.upload(dout), d.upload(slot_row), N, S, C);
        return Outputs{{{"dinp", d.download(dinp, elems(N, C))}}, {}};
    };
}

Case combine_rows_case(Rng& rng, const SlotLayout& l, int C) {
    const int N = l.N, S = l.S, R = l.rows;
    const Floats src = randn(rng, elems(R, C)), slot_weight = l.slot_weight;
    const Ints slot_row = l.slot_row;
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(N, C));
        be.combine_rows(out, d.upload(src), d.upload(slot_weight), d.upload(slot_row), N, S, C);
        return Outputs{{{"out", d.download(out, elems(N, C))}}, {}};
    };
}

Case combine_rows_backward_case(Rng& rng, const SlotLayout& l, int C) {
    const int N = l.N, S = l.S, R = l.rows;
    const Floats dout = randn(rng, elems(N, C)), src = randn(rng, elems(R, C)),
                 dsrc0 = randn(rng, elems(R, C)), dslot_weight0 = randn(rng, elems(N, S)),
                 slot_weight = l.slot_weight;
    const Ints slot_row = l.slot_row;
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dsrc = d.upload(dsrc0);
        float* dslot_weight = d.upload(dslot_weight0);
        be.combine_rows_backward(dsrc, dslot_weight, d.upload(dout), d.upload(src),
                                 d.upload(slot_weight), d.upload(slot_row), N, S, C);
        return Outputs{{{"dsrc", d.download(dsrc, elems(R, C))},
                        {"dslot_weight", d.download(dslot_weight, elems(N, S))}},
                       {}};
    };
}

Case patch_embed_input_case(Rng& rng, int B, int H, int W, int p) {
    const Floats images = randn(rng, elems(B, H, W));
    const std::size_t n = elems(B, (H / p) * (W / p), p * p);
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(n);
        be.patch_embed_input(out, d.upload(images), B, H, W, p);
        return Outputs{{{"out", d.download(out, n)}}, {}};
    };
}

Case assemble_tokens_case(Rng& rng, int B, int P, int C) {
    const int T = 1 + P;
    const Floats patch = randn(rng, elems(B, P, C)), cls = randn(rng, elems(C)),
                 wpe = randn(rng, elems(T, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(B, T, C));
        be.assemble_tokens(out, d.upload(patch), d.upload(cls), d.upload(wpe), B, P, C);
        return Outputs{{{"out", d.download(out, elems(B, T, C))}}, {}};
    };
}

Case assemble_tokens_backward_case(Rng& rng, int B, int P, int C, bool with_patch,
                                   bool with_cls, bool with_wpe) {
    const int T = 1 + P;
    const Floats dout = randn(rng, elems(B, T, C)), dpatch0 = randn(rng, elems(B, P, C)),
                 dcls0 = randn(rng, elems(C)), dwpe0 = randn(rng, elems(T, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dpatch = with_patch ? d.upload(dpatch0) : nullptr;
        float* dcls = with_cls ? d.upload(dcls0) : nullptr;
        float* dwpe = with_wpe ? d.upload(dwpe0) : nullptr;
        be.assemble_tokens_backward(dpatch, dcls, dwpe, d.upload(dout), B, P, C);
        Outputs o;
        if (dpatch) o.floats.emplace_back("dpatch_emb", d.download(dpatch, elems(B, P, C)));
        if (dcls) o.floats.emplace_back("dcls", d.download(dcls, elems(C)));
        if (dwpe) o.floats.emplace_back("dwpe", d.download(dwpe, elems(T, C)));
        return o;
    };
}

Case gather_class_tokens_case(Rng& rng, int B, int T, int C) {
    const Floats x = randn(rng, elems(B, T, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* out = d.outputs(elems(B, C));
        be.gather_class_tokens(out, d.upload(x), B, T, C);
        return Outputs{{{"out", d.download(out, elems(B, C))}}, {}};
    };
}

Case scatter_class_tokens_case(Rng& rng, int B, int T, int C) {
    const Floats dx0 = randn(rng, elems(B, T, C)), dout = randn(rng, elems(B, C));
    return [=](Backend& be) {
        DeviceArena d(be);
        float* dx = d.upload(dx0);
        be.scatter_class_tokens(dx, d.upload(dout), B, T, C);
        return Outputs{{{"dx", d.download(dx, elems(B, T, C))}}, {}};
    };
}

Case adamw_case(Rng& rng, int n, int64_t step) {
    const Floats params0 = randn(rng, elems(n)), grads = randn(rng, elems(n)),
                 m0 = randn(rng, elems(n), 0.1f);
    Floats v0 = randn(rng, elems(n), 0.1f);
    for (auto& x : v0) x = x * x;  // second moments are non-negative
    return [=](Backend& be) {
        DeviceArena d(be);
        float* params = d.upload(params0);
        float* m = d.upload(m0);
        float* v = d.upload(v0);
        be.adamw_update(params, d.upload(grads), m, v, elems(n), /*lr=*/1e-3f, /*beta1=*/0.9f,
                        /*beta2=*/0.95f, /*eps=*/1e-8f, /*weight_decay=*/0.1f,
                        /*grad_scale=*/0.5f, step);
        return Outputs{{{"params", d.download(params, elems(n))},
                        {"m", d.download(m, elems(n))},
                        {"v", d.download(v, elems(n))}},
                       {}};
    };
}

// ---- shapes ------------------------------------------------------------------------------

struct Mkn {
    int M, K, N;
};
// M, K, N off multiples of 32 and a few that are, from 1×1×1 up to a 4·C MLP projection.
const std::vector<Mkn> kMatmulShapes = {{1, 1, 1},     {7, 13, 5},    {33, 17, 65},
                                        {64, 128, 96}, {100, 48, 200}, {128, 512, 128},
                                        {1000, 64, 96}};  // many row chunks of dbias

struct Bthc {
    int B, T, C, H;  // head size C/H in {8, 16, 32, 64}
};
const std::vector<Bthc> kAttentionShapes = {{1, 1, 16, 2},   {2, 17, 48, 3},  {2, 50, 128, 4},
                                            {2, 128, 128, 2}, {3, 17, 32, 4}, {1, 128, 64, 4},
                                            {1, 50, 256, 4}};

struct Nc {
    int N, C;
};
const std::vector<Nc> kRowShapes = {{1, 16}, {17, 48}, {50, 128}, {128, 33}, {5, 768}};

// ---- memory ------------------------------------------------------------------------------

TEST_F(CudaParity, MemoryOps) {
    const std::size_t n = 1000;
    const Floats host = randn(rng_, n);
    Backend& be = *cuda_;
    DeviceArena d(be);
    float* a = d.upload(host);
    EXPECT_EQ(d.download(a, n), host) << "upload then download";
    float* b = d.outputs(n);
    be.copy(b, a, n * sizeof(float));
    EXPECT_EQ(d.download(b, n), host) << "copy";
    const std::size_t first = 3, count = 500;
    be.zero(b + first, count * sizeof(float));
    Floats want = host;
    std::fill(want.begin() + first, want.begin() + first + count, 0.0f);
    EXPECT_EQ(d.download(b, n), want) << "zero of a sub-range";
    const Ints ints = random_ints(rng_, 77, 1000);
    EXPECT_EQ(d.download(d.upload(ints), ints.size()), ints) << "int32 round trip";
}

// ---- linear layer ------------------------------------------------------------------------

TEST_F(CudaParity, MatmulForward) {
    for (const auto& s : kMatmulShapes) {
        for (bool bias : {true, false}) {
            expect_parity(matmul_forward_case(rng_, s.M, s.K, s.N, bias), kLongReduction,
                          "matmul_forward " + shape_name({s.M, s.K, s.N}) +
                              (bias ? " bias" : " no bias"));
        }
    }
}

TEST_F(CudaParity, MatmulBackward) {
    for (const auto& s : kMatmulShapes) {
        for (const auto& [with_dinp, with_dbias] :
             {std::pair{true, true}, std::pair{false, true}, std::pair{true, false},
              std::pair{false, false}}) {
            expect_parity(matmul_backward_case(rng_, s.M, s.K, s.N, with_dinp, with_dbias),
                          kLongReduction,
                          "matmul_backward " + shape_name({s.M, s.K, s.N}) +
                              (with_dinp ? " dinp" : "") + (with_dbias ? " dbias" : ""));
        }
    }
}

// ---- embeddings --------------------------------------------------------------------------

struct Btcv {
    int B, T, C, V;
};
const std::vector<Btcv> kEmbeddingShapes = {
    {1, 1, 16, 7}, {2, 17, 48, 256}, {3, 50, 128, 1000}, {4, 128, 32, 7}, {2, 33, 33, 50},
    {8, 512, 64, 256}};  // long runs of repeated tokens

TEST_F(CudaParity, EmbeddingForward) {
    for (const auto& s : kEmbeddingShapes) {
        expect_parity(embedding_forward_case(rng_, s.B, s.T, s.C, s.V), kPointwise,
                      "embedding_forward " + shape_name({s.B, s.T, s.C, s.V}));
    }
}

TEST_F(CudaParity, EmbeddingBackward) {
    for (const auto& s : kEmbeddingShapes) {
        expect_parity(embedding_backward_case(rng_, s.B, s.T, s.C, s.V), kReduction,
                      "embedding_backward " + shape_name({s.B, s.T, s.C, s.V}));
    }
}

// ---- layernorm ---------------------------------------------------------------------------

TEST_F(CudaParity, LayerNormForward) {
    for (const auto& s : kRowShapes) {
        expect_parity(layernorm_forward_case(rng_, s.N, s.C), kReduction,
                      "layernorm_forward " + shape_name({s.N, s.C}));
    }
}

TEST_F(CudaParity, LayerNormBackward) {
    for (const auto& s : kRowShapes) {
        expect_parity(layernorm_backward_case(rng_, s.N, s.C), kReduction,
                      "layernorm_backward " + shape_name({s.N, s.C}));
    }
}

// ---- attention ---------------------------------------------------------------------------

TEST_F(CudaParity, AttentionForward) {
    for (const auto& s : kAttentionShapes) {
        for (bool causal : {true, false}) {
            expect_parity(attention_forward_case(rng_, s.B, s.T, s.C, s.H, causal),
                          kLongReduction,
                          "attention_forward " + shape_name({s.B, s.T, s.C, s.H}) +
                              (causal ? " causal" : " full"));
        }
    }
}

TEST_F(CudaParity, AttentionBackward) {
    for (const auto& s : kAttentionShapes) {
        for (bool causal : {true, false}) {
            expect_parity(attention_backward_case(rng_, s.B, s.T, s.C, s.H, causal),
                          kLongReduction,
                          "attention_backward " + shape_name({s.B, s.T, s.C, s.H}) +
                              (causal ? " causal" : " full"));
        }
    }
}

// ---- attention in bf16 precision ---------------------------------------------------------
//
// With Precision::BF16 the CUDA backend runs attention on the tensor cores
// (kernels/cuda/attention_bf16.cu) when the head size C/H is a multiple of 16 and at most 128:
// every matrix product inside attention (q·kᵀ, P·v; in the backward also dout·vᵀ, dSᵀ·q,
// dS·k, Pᵀ·dout) takes operands rounded to bf16 and accumulates in fp32, while the softmax
// statistics, D and dS stay fp32. The reference is the CPU backend in fp32 — the exact math —
// so the tolerance is that of bf16 operands, not of a summation order.
//
// Rounding to bf16 (8 significant bits) moves a value by up to 2^-8 ≈ 4e-3 of itself. The
// inputs here have std 1.5, so the products q_d·k_d are ~2 in size and the scores
// S = Σ_d q_d·k_d/√hs carry absolute errors of a few 1e-3 each (up to ~0.03 in the tails
// over thousands of rows), whatever |S| is (the terms of the dot product may cancel); the
// exponential turns them into relative errors of the probabilities of the same size.
//   out   rtol 3e-2: P (score error, then rounded to bf16) times rounded v, against
//         max|out| ≈ max|v|.
//   lse   rtol 1e-2 plus atol 2e-2: lse is a weighted mean of the scores, so it carries
//         their absolute error, which does not shrink with |lse| (a single token's lse is
//         one score).
//   dqkv  rtol 5e-2: one more level of products (dS = P∘(dP - D) with dP from rounded dout
//         and v, dS rounded again before dS·k and dSᵀ·q), and dP - D cancels to small values
//         in peaked rows, so the absolute error of dP passes into dS in full; the score
//         error δS also enters dS as P·δS·(dP - D), with |dP - D| up to ~10 here.
// Measured beforehand with a CPU emulation of the kernels' arithmetic (bf16 rounding, fp32
// accumulation) on exactly these shapes and inputs (the fixture's seed): out ≤ 9.6e-3,
// dqkv ≤ 2.0e-2 (hs = 16, causal, T = 128) of the reference's largest magnitude; lse within
// 0.38 of its bound (T = 1). The tolerances leave a margin of 2.5× or more; a wrong index or
// mask shows as errors of the order of the values themselves.
constexpr Tolerance kAttentionBf16Out{3e-2, 0.0};
constexpr Tolerance kAttentionBf16Lse{1e-2, 2e-2};
constexpr Tolerance kAttentionBf16Grad{5e-2, 0.0};
constexpr int kBf16HeadQuantum = 16;  // the bf16 kernels take head sizes that are multiples
                                      // of this (the WMMA tile), up to 128

// The attention shapes whose head size the bf16 kernels take, and more: head sizes 48 and 128
// (three and eight 16-wide fragments), T = 77, 130, 200 (not multiples of the kernels'
// 64-row tiles, 2 to 4 tiles), and a single token.
const std::vector<Bthc> kAttentionBf16Shapes = [] {
    std::vector<Bthc> shapes;
    for (const auto& s : kAttentionShapes) {
        if ((s.C / s.H) % kBf16HeadQuantum == 0) shapes.push_back(s);
    }
    for (const auto& s : {Bthc{1, 200, 256, 4}, Bthc{1, 77, 256, 2}, Bthc{2, 130, 96, 2},
                          Bthc{1, 1, 32, 2}}) {
        shapes.push_back(s);
    }
    return shapes;
}();

// The op on the CPU backend (fp32) and on the CUDA backend (whose precision the caller set
// to BF16): every float output within its tolerance (by name), and — the negative control —
// the output named `control` differing from the CPU by MORE than the fp32 kernels' own
// tolerance (kLongReduction), which proves that the bf16 path ran: the fp32 kernels pass
// their parity tests within that bound, while bf16 rounding alone moves results by ~1e-3
// of their magnitude or more.
void expect_bf16_parity(Backend& cpu, Backend& cuda, const Case& run,
                        const std::vector<std::pair<std::string, Tolerance>>& tolerances,
                        const std::string& control, const std::string& what) {
    SCOPED_TRACE(what);
    ASSERT_EQ(cpu.precision(), Precision::FP32);
    ASSERT_EQ(cuda.precision(), Precision::BF16);
    const Outputs want = run(cpu);
    const Outputs got = run(cuda);
    ASSERT_EQ(want.floats.size(), got.floats.size());
    bool control_seen = false;
    for (std::size_t i = 0; i < want.floats.size(); ++i) {
        const std::string& name = want.floats[i].first;
        const Floats& ref = want.floats[i].second;
        const Floats& out = got.floats[i].second;
        const auto tol = std::find_if(tolerances.begin(), tolerances.end(),
                                      [&](const auto& entry) { return entry.first == name; });
        ASSERT_NE(tol, tolerances.end()) << "no tolerance for " << name;
        expect_close(ref, out, tol->second, what + " " + name);
        if (name != control) continue;
        control_seen = true;
        expect_beyond(ref, out, kLongReduction,
                      what + " " + name +
                          ": within the fp32 kernels' tolerance of the CPU; did the bf16 path run?");
    }
    EXPECT_TRUE(control_seen) << "no output named " << control;
}

TEST_F(CudaParity, AttentionForwardBf16) {
    cuda_->set_precision(Precision::BF16);
    for (const auto& s : kAttentionBf16Shapes) {
        for (bool causal : {true, false}) {
            expect_bf16_parity(cpu_, *cuda_,
                               attention_forward_case(rng_, s.B, s.T, s.C, s.H, causal),
                               {{"out", kAttentionBf16Out}, {"lse", kAttentionBf16Lse}}, "out",
                               "attention_forward bf16 " + shape_name({s.B, s.T, s.C, s.H}) +
                                   (causal ? " causal" : " full"));
        }
    }
    // Head sizes the bf16 kernels do not take (8 here) run the fp32 kernels, in precision.
    for (const auto& s : kAttentionShapes) {
        if ((s.C / s.H) % kBf16HeadQuantum == 0) continue;
        expect_parity(attention_forward_case(rng_, s.B, s.T, s.C, s.H, true), kLongReduction,
                      "attention_forward bf16 mode, fp32 fallback " +
                          shape_name({s.B, s.T, s.C, s.H}));
    }
    expect_deterministic(attention_forward_case(rng_, 2, 130, 96, 2, true),
                         "attention_forward bf16 causal");
    expect_deterministic(attention_forward_case(rng_, 1, 77, 256, 2, false),
                         "attention_forward bf16 full");
    cuda_->set_precision(Precision::FP32);
}

TEST_F(CudaParity, AttentionBackwardBf16) {
    cuda_->set_precision(Precision::BF16);
    for (const auto& s : kAttentionBf16Shapes) {
        for (bool causal : {true, false}) {
            expect_bf16_parity(cpu_, *cuda_,
                               attention_backward_case(rng_, s.B, s.T, s.C, s.H, causal),
                               {{"dqkv", kAttentionBf16Grad}}, "dqkv",
                               "attention_backward bf16 " + shape_name({s.B, s.T, s.C, s.H}) +
                                   (causal ? " causal" : " full"));
        }
    }
    for (const auto& s : kAttentionShapes) {
        if ((s.C / s.H) % kBf16HeadQuantum == 0) continue;
        expect_parity(attention_backward_case(rng_, s.B, s.T, s.C, s.H, true), kLongReduction,
                      "attention_backward bf16 mode, fp32 fallback " +
                          shape_name({s.B, s.T, s.C, s.H}));
    }
    expect_deterministic(attention_backward_case(rng_, 2, 130, 96, 2, true),
                         "attention_backward bf16 causal");
    expect_deterministic(attention_backward_case(rng_, 1, 200, 256, 4, false),
                         "attention_backward bf16 full");
    cuda_->set_precision(Precision::FP32);
}

// ---- pointwise ---------------------------------------------------------------------------

const std::vector<int> kPointwiseSizes = {1, 31, 1001, 65537};

TEST_F(CudaParity, GeluForward) {
    for (int n : kPointwiseSizes) {
        expect_parity(gelu_forward_case(rng_, n), kTranscendental,
                      "gelu_forward " + std::to_string(n));
    }
}

TEST_F(CudaParity, GeluBackward) {
    for (int n : kPointwiseSizes) {
        expect_parity(gelu_backward_case(rng_, n), kTranscendental,
                      "gelu_backward " + std::to_string(n));
    }
}

TEST_F(CudaParity, AddAccumulateScale) {
    for (int n : kPointwiseSizes) {
        const std::string size = " " + std::to_string(n);
        expect_parity(add_case(rng_, n, AddAlias::None), kPointwise, "add" + size);
        expect_parity(add_case(rng_, n, AddAlias::OutIsA), kPointwise, "add out=a" + size);
        expect_parity(add_case(rng_, n, AddAlias::OutIsB), kPointwise, "add out=b" + size);
        expect_parity(accumulate_case(rng_, n), kPointwise, "accumulate" + size);
        expect_parity(scale_case(rng_, n, 0.37f), kPointwise, "scale" + size);
        expect_parity(scale_case(rng_, n, 0.0f), kPointwise, "scale by 0" + size);
    }
}

// ---- loss --------------------------------------------------------------------------------

TEST_F(CudaParity, SoftmaxCrossEntropy) {
    struct Nv {
        int N, V;
    };
    for (const auto& s : {Nv{1, 2}, Nv{3, 7}, Nv{17, 256}, Nv{50, 1000}, Nv{4, 50257}}) {
        for (const auto& [mode, name] :
             {std::pair{CeMode::Separate, "separate dlogits"},
              std::pair{CeMode::InPlace, "dlogits in place"},
              std::pair{CeMode::LossOnly, "loss only"}}) {
            expect_parity(softmax_crossentropy_case(rng_, s.N, s.V, mode), kReduction,
                          "softmax_crossentropy " + shape_name({s.N, s.V}) + " " + name);
        }
    }
}

// ---- MoE dispatch and combine ------------------------------------------------------------

struct DispatchShape {
    SlotLayout layout;
    int C;
};

// Capacities as the routers size them: ceil(k·N·cf/E) for top-k, ceil(N·cf/E) for expert
// choice. E = 4 unless stated.
//   top-k, k = 2, padded: cf 1 with random drops; P above the capacity (more padding); cf
//     0.625 (many overflow drops); every pick dropped (padding rows only); C = 768 (many
//     channels per lane).
//   top-k compact: no capacity (N·k rows, nothing dropped); a single token; cf 0.625 with
//     random drops (the rows after the last expert's are padding).
//   expert choice, S = E, cf 1: many empty slots and tokens no expert picked; E = 8 with P
//     above the capacity.
std::vector<DispatchShape> dispatch_shapes(Rng& rng) {
    constexpr int kExperts = 4, kTopK = 2;
    std::vector<DispatchShape> shapes;
    shapes.push_back({topk_layout(rng, 17, kExperts, kTopK, 9, 9, 0.3f), 48});
    shapes.push_back({topk_layout(rng, 50, kExperts, kTopK, 25, 32, 0.0f), 128});
    shapes.push_back({topk_layout(rng, 128, kExperts, kTopK, 40, 40, 0.3f), 33});
    shapes.push_back({topk_layout(rng, 5, kExperts, kTopK, 3, 3, 1.0f), 16});
    shapes.push_back({topk_layout(rng, 5, kExperts, kTopK, 3, 4, 0.0f), 768});
    shapes.push_back({topk_layout(rng, 128, kExperts, kTopK, 0, 0, 0.0f), 16});
    shapes.push_back({topk_layout(rng, 1, kExperts, kTopK, 0, 0, 0.0f), 16});
    shapes.push_back({topk_layout(rng, 64, kExperts, kTopK, 20, 0, 0.2f), 40});
    shapes.push_back({expert_choice_layout(rng, 50, kExperts, ceil_div(50, kExperts), 13), 48});
    shapes.push_back({expert_choice_layout(rng, 33, 8, ceil_div(33, 8), 8), 20});
    return shapes;
}

std::string dispatch_name(const DispatchShape& s) {
    return s.layout.name + " C=" + std::to_string(s.C);
}

// The generator itself (no GPU needed): each kept slot's row names its token, no row is
// carried twice, every non-padding row is carried, weights are 0 exactly on empty slots;
// and the shapes cover what the kernels must handle.
TEST(SlotLayouts, AreValidRoutingLayouts) {
    Rng rng(7);
    int tokens_without_slot = 0, padding_rows = 0, kept_after_empty = 0;
    for (const DispatchShape& shape : dispatch_shapes(rng)) {
        const SlotLayout& l = shape.layout;
        SCOPED_TRACE(l.name);
        std::vector<int> carried(static_cast<std::size_t>(l.rows), 0);
        for (int n = 0; n < l.N; ++n) {
            bool empty_seen = false;
            for (int s = 0; s < l.S; ++s) {
                const std::size_t slot = elems(n, l.S) + static_cast<std::size_t>(s);
                const int32_t row = l.slot_row[slot];
                if (row < 0) {
                    EXPECT_EQ(l.slot_weight[slot], 0.0f);
                    empty_seen = true;
                    continue;
                }
                kept_after_empty += empty_seen;
                ASSERT_LT(row, l.rows);
                EXPECT_EQ(l.row_token[static_cast<std::size_t>(row)], n);
                EXPECT_GT(l.slot_weight[slot], 0.0f);
                ++carried[static_cast<std::size_t>(row)];
            }
        }
        bool padding_seen = false;
        for (int r = 0; r < l.rows; ++r) {
            const bool padding = l.row_token[static_cast<std::size_t>(r)] < 0;
            padding_rows += padding;
            EXPECT_EQ(carried[static_cast<std::size_t>(r)], padding ? 0 : 1) << "row " << r;
            // compact: padding only after the last expert's rows
            if (l.P == 0) {
                EXPECT_FALSE(padding_seen && !padding) << "row " << r;
            }
            padding_seen = padding_seen || padding;
        }
        tokens_without_slot += l.tokens_without_slot();
    }
    EXPECT_GT(tokens_without_slot, 5);  // the combine writes zeros, its backward nothing
    EXPECT_GT(padding_rows, 5);         // gather_rows writes zeros
    EXPECT_GT(kept_after_empty, 0);     // a dropped rank 0 before a kept rank 1
}

TEST_F(CudaParity, GatherRows) {
    for (const DispatchShape& s : dispatch_shapes(rng_)) {
        expect_parity(gather_rows_case(rng_, s.layout, s.C), kExact,
                      "gather_rows " + dispatch_name(s));
        expect_parity(gather_rows_backward_case(rng_, s.layout, s.C), kPointwise,
                      "gather_rows_backward " + dispatch_name(s));
    }
}

TEST_F(CudaParity, CombineRows) {
    for (const DispatchShape& s : dispatch_shapes(rng_)) {
        expect_parity(combine_rows_case(rng_, s.layout, s.C), kReduction,
                      "combine_rows " + dispatch_name(s));
        expect_parity(combine_rows_backward_case(rng_, s.layout, s.C), kReduction,
                      "combine_rows_backward " + dispatch_name(s));
    }
}

// ---- vision ------------------------------------------------------------------------------

TEST_F(CudaParity, PatchEmbedInput) {
    struct Bhwp {
        int B, H, W, p;
    };
    for (const auto& s :
         {Bhwp{2, 28, 28, 7}, Bhwp{3, 14, 21, 7}, Bhwp{1, 28, 28, 4}, Bhwp{2, 8, 12, 4},
          Bhwp{1, 5, 5, 1}}) {
        expect_parity(patch_embed_input_case(rng_, s.B, s.H, s.W, s.p), kExact,
                      "patch_embed_input " + shape_name({s.B, s.H, s.W, s.p}));
    }
}

struct Bpc {
    int B, P, C;
};
const std::vector<Bpc> kTokenShapes = {{1, 1, 16}, {3, 16, 48}, {2, 49, 128}, {5, 4, 33}};

TEST_F(CudaParity, AssembleTokens) {
    for (const auto& s : kTokenShapes) {
        expect_parity(assemble_tokens_case(rng_, s.B, s.P, s.C), kPointwise,
                      "assemble_tokens " + shape_name({s.B, s.P, s.C}));
    }
}

TEST_F(CudaParity, AssembleTokensBackward) {
    struct Which {
        bool patch, cls, wpe;
    };
    for (const auto& s : kTokenShapes) {
        for (const auto& w : {Which{true, true, true}, Which{false, true, true},
                              Which{true, false, true}, Which{true, true, false},
                              Which{false, true, false}, Which{false, false, true},
                              Which{true, false, false}}) {
            expect_parity(assemble_tokens_backward_case(rng_, s.B, s.P, s.C, w.patch, w.cls,
                                                        w.wpe),
                          kPointwise,
                          "assemble_tokens_backward " + shape_name({s.B, s.P, s.C}) +
                              (w.patch ? " dpatch" : "") + (w.cls ? " dcls" : "") +
                              (w.wpe ? " dwpe" : ""));
        }
    }
}

TEST_F(CudaParity, ClassTokens) {
    struct Btc {
        int B, T, C;
    };
    for (const auto& s : {Btc{1, 1, 16}, Btc{3, 17, 48}, Btc{2, 50, 128}, Btc{4, 5, 33}}) {
        expect_parity(gather_class_tokens_case(rng_, s.B, s.T, s.C), kExact,
                      "gather_class_tokens " + shape_name({s.B, s.T, s.C}));
        expect_parity(scatter_class_tokens_case(rng_, s.B, s.T, s.C), kPointwise,
                      "scatter_class_tokens " + shape_name({s.B, s.T, s.C}));
    }
}

// ---- optimizer ---------------------------------------------------------------------------

TEST_F(CudaParity, AdamW) {
    for (int n : {1, 15, 17, 1000, 65541}) {
        for (int64_t step : {int64_t{1}, int64_t{10}, int64_t{1000}}) {
            expect_parity(adamw_case(rng_, n, step), kAdamW,
                          "adamw_update n=" + std::to_string(n) + " step " +
                              std::to_string(step));
        }
    }
}

TEST_F(CudaParity, SumSquares) {
    for (int n : {1, 31, 1000, (1 << 14) + 7, (1 << 20) + 3}) {
        const Floats x = randn(rng_, elems(n), 3.0f);
        DeviceArena d(*cuda_);
        const double got = cuda_->sum_squares(d.upload(x), x.size());
        const double want = cpu_.sum_squares(x.data(), x.size());
        EXPECT_LE(std::fabs(got - want), kSumSquaresRtol * want)
            << "sum_squares n=" << n << ": cuda " << got << ", cpu " << want;
        EXPECT_EQ(cuda_->sum_squares(d.upload(Floats{}), 0), 0.0) << "n = 0";
    }
}

// ---- determinism: the same call twice on CUDA gives the same bits ------------------------

TEST_F(CudaParity, BackwardOpsAreDeterministic) {
    expect_deterministic(matmul_backward_case(rng_, 100, 48, 200, true, true),
                         "matmul_backward");
    expect_deterministic(matmul_backward_case(rng_, 1024, 64, 96, true, true),
                         "matmul_backward, long M");
    expect_deterministic(embedding_backward_case(rng_, 4, 128, 48, 7), "embedding_backward");
    expect_deterministic(layernorm_backward_case(rng_, 256, 128), "layernorm_backward");
    expect_deterministic(attention_backward_case(rng_, 2, 128, 128, 2, true),
                         "attention_backward causal");
    expect_deterministic(attention_backward_case(rng_, 3, 50, 48, 3, false),
                         "attention_backward full");
    expect_deterministic(gelu_backward_case(rng_, 65537), "gelu_backward");
    expect_deterministic(softmax_crossentropy_case(rng_, 50, 1000, CeMode::Separate),
                         "softmax_crossentropy");
    for (const SlotLayout& l : {topk_layout(rng_, 128, 4, 2, 64, 64, 0.3f),
                                expert_choice_layout(rng_, 128, 8, 16, 16)}) {
        expect_deterministic(gather_rows_backward_case(rng_, l, 48),
                             "gather_rows_backward " + l.name);
        expect_deterministic(combine_rows_backward_case(rng_, l, 48),
                             "combine_rows_backward " + l.name);
    }
    expect_deterministic(assemble_tokens_backward_case(rng_, 8, 49, 48, true, true, true),
                         "assemble_tokens_backward");
}

TEST_F(CudaParity, SumSquaresIsDeterministic) {
    const Floats x = randn(rng_, (1 << 20) + 3);
    DeviceArena d(*cuda_);
    const float* px = d.upload(x);
    const double a = cuda_->sum_squares(px, x.size());
    const double b = cuda_->sum_squares(px, x.size());
    EXPECT_EQ(std::memcmp(&a, &b, sizeof(double)), 0) << a << " vs " << b;
}

}  // namespace
}  // namespace upcycle
