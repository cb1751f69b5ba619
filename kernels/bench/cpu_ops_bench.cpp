// Microbenchmarks of the CPU backend ops at the shapes of gpt-tiny (C=128, T=128, B=16) and
// gpt-small (C=512, T=256, B=8), plus one whole gpt-tiny training step's worth of ops.
//   ./upcycle_kernel_bench --benchmark_min_time=0.2
// Times are wall-clock (UseRealTime: the ops run on several threads). Counters: GFLOP/s for
// GEMM-shaped ops, GB/s (bytes read + written once) for the memory-bound ones. Causal
// attention counts only the unmasked half of the score matrix: forward 2·B·T²·C FLOPs
// (q·kᵀ and P·v), backward 2.5× that (five T×T×hs products); non-causal twice that.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/process_setup.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

using Floats = std::vector<float>;

Floats random_floats(std::size_t n, float scale = 1.0f, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    Floats out(n);
    for (auto& x : out) x = dist(rng);
    return out;
}

CpuBackend& backend() {
    static CpuBackend cpu;
    return cpu;
}

void set_rate(benchmark::State& state, const char* name, double per_iteration) {
    state.counters[name] = benchmark::Counter(
        per_iteration * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
void set_gflops(benchmark::State& state, double flops) { set_rate(state, "GFLOP/s", flops * 1e-9); }
void set_gbytes(benchmark::State& state, double bytes) { set_rate(state, "GB/s", bytes * 1e-9); }

// ---- matmul: args M, K, N ------------------------------------------------------------------

void BM_MatmulForward(benchmark::State& state) {
    const int M = state.range(0), K = state.range(1), N = state.range(2);
    Floats inp = random_floats(std::size_t(M) * K), w = random_floats(std::size_t(N) * K),
           bias = random_floats(N), out(std::size_t(M) * N);
    for (auto _ : state) {
        backend().matmul_forward(out.data(), inp.data(), w.data(), bias.data(), M, K, N);
        benchmark::DoNotOptimize(out.data());
    }
    set_gflops(state, 2.0 * M * K * N);
}

void BM_MatmulBackward(benchmark::State& state) {
    const int M = state.range(0), K = state.range(1), N = state.range(2);
    Floats inp = random_floats(std::size_t(M) * K), w = random_floats(std::size_t(N) * K),
           dout = random_floats(std::size_t(M) * N), dinp(inp.size()), dw(w.size()), db(N);
    for (auto _ : state) {
        backend().matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                                  w.data(), M, K, N);
        benchmark::DoNotOptimize(dw.data());
    }
    set_gflops(state, 4.0 * M * K * N);
}

void matmul_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N"});
    // gpt-tiny (C=128): qkv, fc, mlp proj, attn proj, tied lm head (V=256);
    // gpt-small (C=512): qkv, fc, mlp proj
    for (auto [K, N] : {std::pair{128, 384}, std::pair{128, 512}, std::pair{512, 128},
                        std::pair{128, 128}, std::pair{128, 256}, std::pair{512, 1536},
                        std::pair{512, 2048}, std::pair{2048, 512}})
        b->Args({2048, K, N});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK(BM_MatmulForward)->Apply(matmul_shapes);
BENCHMARK(BM_MatmulBackward)->Apply(matmul_shapes);

// ---- attention: args B, T, C, H, causal -------------------------------------------------------

struct AttentionData {
    int B, T, C, H;
    bool causal;
    Floats qkv, out, lse, dout, dqkv;
    explicit AttentionData(const benchmark::State& state)
        : B(state.range(0)), T(state.range(1)), C(state.range(2)), H(state.range(3)),
          causal(state.range(4) != 0),
          qkv(random_floats(std::size_t(B) * T * 3 * C)),
          out(std::size_t(B) * T * C),
          lse(std::size_t(B) * H * T),
          dout(random_floats(std::size_t(B) * T * C, 1.0f, 2)),
          dqkv(qkv.size()) {}
    double forward_flops() const { return 4.0 * B * T * double(T) * C * (causal ? 0.5 : 1.0); }
};

void BM_AttentionForward(benchmark::State& state) {
    AttentionData d(state);
    for (auto _ : state) {
        backend().attention_forward(d.out.data(), d.lse.data(), d.qkv.data(), d.B, d.T, d.C, d.H,
                                    d.causal);
        benchmark::DoNotOptimize(d.out.data());
    }
    set_gflops(state, d.forward_flops());
}

void BM_AttentionBackward(benchmark::State& state) {
    AttentionData d(state);
    backend().attention_forward(d.out.data(), d.lse.data(), d.qkv.data(), d.B, d.T, d.C, d.H,
                                d.causal);
    for (auto _ : state) {
        backend().attention_backward(d.dqkv.data(), d.dout.data(), d.qkv.data(), d.out.data(),
                                     d.lse.data(), d.B, d.T, d.C, d.H, d.causal);
        benchmark::DoNotOptimize(d.dqkv.data());
    }
    set_gflops(state, 2.5 * d.forward_flops());
}

void attention_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "C", "H", "causal"});
    b->Args({16, 128, 128, 4, 1});
    b->Args({16, 128, 128, 4, 0});
    b->Args({8, 256, 512, 8, 1});
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK(BM_AttentionForward)->Apply(attention_shapes);
BENCHMARK(BM_AttentionBackward)->Apply(attention_shapes);

// ---- layernorm: args N, C -------------------------------------------------------------------

void BM_LayerNormForward(benchmark::State& state) {
    const int N = state.range(0), C = state.range(1);
    Floats x = random_floats(std::size_t(N) * C), w = random_floats(C), b = random_floats(C),
           out(x.size()), mean(N), rstd(N);
    for (auto _ : state) {
        backend().layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                    b.data(), N, C);
        benchmark::DoNotOptimize(out.data());
    }
    set_gbytes(state, 2.0 * sizeof(float) * N * C);
}

void BM_LayerNormBackward(benchmark::State& state) {
    const int N = state.range(0), C = state.range(1);
    Floats x = random_floats(std::size_t(N) * C), w = random_floats(C), b = random_floats(C),
           out(x.size()), mean(N), rstd(N), dout = random_floats(x.size(), 1.0f, 2),
           dx(x.size()), dw(C), db(C);
    backend().layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                b.data(), N, C);
    for (auto _ : state) {
        backend().layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(),
                                     w.data(), mean.data(), rstd.data(), N, C);
        benchmark::DoNotOptimize(dx.data());
    }
    set_gbytes(state, 4.0 * sizeof(float) * N * C);  // read x, dout, dx; write dx
}
BENCHMARK(BM_LayerNormForward)->ArgNames({"N", "C"})->Args({2048, 128})->Args({2048, 512})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_LayerNormBackward)->ArgNames({"N", "C"})->Args({2048, 128})->Args({2048, 512})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- gelu: arg n ------------------------------------------------------------------------------

void BM_GeluForward(benchmark::State& state) {
    const std::size_t n = state.range(0);
    Floats x = random_floats(n), out(n);
    for (auto _ : state) {
        backend().gelu_forward(out.data(), x.data(), n);
        benchmark::DoNotOptimize(out.data());
    }
    set_gbytes(state, 2.0 * sizeof(float) * n);
}

void BM_GeluBackward(benchmark::State& state) {
    const std::size_t n = state.range(0);
    Floats x = random_floats(n), dout = random_floats(n, 1.0f, 2), dx(n);
    for (auto _ : state) {
        backend().gelu_backward(dx.data(), x.data(), dout.data(), n);
        benchmark::DoNotOptimize(dx.data());
    }
    set_gbytes(state, 4.0 * sizeof(float) * n);
}
// 2048 tokens × 4C for gpt-tiny (C=128) and gpt-small (C=512)
BENCHMARK(BM_GeluForward)->ArgName("n")->Arg(2048 * 512)->Arg(2048 * 2048)
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_GeluBackward)->ArgName("n")->Arg(2048 * 512)->Arg(2048 * 2048)
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- softmax + cross-entropy: args N, V --------------------------------------------------------

void BM_SoftmaxCrossEntropy(benchmark::State& state) {
    const int N = state.range(0), V = state.range(1);
    const Floats logits = random_floats(std::size_t(N) * V, 2.0f);
    Floats dlogits(logits.size()), losses(N);
    std::vector<int32_t> targets(N), argmax(N);
    for (int n = 0; n < N; ++n) targets[n] = (n * 7919) % V;
    for (auto _ : state) {
        // out of place, so every iteration sees the same logits (training runs it in place;
        // the arithmetic and memory traffic are the same)
        backend().softmax_crossentropy(losses.data(), dlogits.data(), argmax.data(),
                                       logits.data(), targets.data(), N, V, 1.0f / N);
        benchmark::DoNotOptimize(dlogits.data());
    }
    set_gbytes(state, 2.0 * sizeof(float) * N * V);
}
BENCHMARK(BM_SoftmaxCrossEntropy)->ArgNames({"N", "V"})->Args({2048, 256})->Args({2048, 50304})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- AdamW: arg n -------------------------------------------------------------------------------

void BM_AdamW(benchmark::State& state) {
    const std::size_t n = state.range(0);
    Floats p = random_floats(n), g = random_floats(n, 1.0f, 2), m(n), v(n);
    int64_t step = 0;
    for (auto _ : state) {
        backend().adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f,
                               1e-8f, 0.1f, 1.0f, ++step);
        benchmark::DoNotOptimize(p.data());
    }
    set_gbytes(state, 7.0 * sizeof(float) * n);  // read p, g, m, v; write p, m, v
}
BENCHMARK(BM_AdamW)->ArgName("n")->Arg(1 << 20)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_SumSquares(benchmark::State& state) {
    const std::size_t n = state.range(0);
    Floats x = random_floats(n);
    for (auto _ : state) benchmark::DoNotOptimize(backend().sum_squares(x.data(), n));
    set_gbytes(state, sizeof(float) * double(n));
}
BENCHMARK(BM_SumSquares)->ArgName("n")->Arg(1 << 20)->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// ---- one gpt-tiny training step's ops ----------------------------------------------------
// The op sequence of a pre-LN GPT forward + backward + AdamW with the real shapes (V=256,
// T=128, C=128, L=4, H=4, B=16: 2048 tokens), on buffers allocated once. Not the model
// itself (no residual bookkeeping beyond add/accumulate), but the same kernels and sizes,
// so its time per step bounds what the training loop can reach on this machine.

struct TinyGpt {
    static constexpr int V = 256, T = 128, C = 128, L = 4, H = 4, B = 16, N = B * T;
    struct Layer {
        Floats ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcp_w, fcp_b;
        Floats ln1_out, ln1_mean, ln1_rstd, qkv, att, lse, att_proj, res1, ln2_out, ln2_mean,
            ln2_rstd, fc, gelu, res2;
    };
    Floats wte, wpe, lnf_w, lnf_b, x0, lnf_out, lnf_mean, lnf_rstd, logits, losses;
    std::vector<Layer> layers;
    std::vector<int32_t> tokens, targets;
    // gradient buffers: one flat block for params, activations reuse scratch
    Floats dparams, m, v, params_flat;
    Floats d_res, d_tmp, d_big, d_big2, d_qkv, d_ln;

    TinyGpt() {
        unsigned seed = 10;
        auto p = [&](std::size_t n, float s = 0.02f) { return random_floats(n, s, seed++); };
        wte = p(V * C);
        wpe = p(T * C);
        lnf_w.assign(C, 1.0f);
        lnf_b.assign(C, 0.0f);
        layers.resize(L);
        for (auto& l : layers) {
            l.ln1_w.assign(C, 1.0f);
            l.ln1_b.assign(C, 0.0f);
            l.qkv_w = p(3 * C * C);
            l.qkv_b = p(3 * C);
            l.proj_w = p(C * C);
            l.proj_b = p(C);
            l.ln2_w.assign(C, 1.0f);
            l.ln2_b.assign(C, 0.0f);
            l.fc_w = p(4 * C * C);
            l.fc_b = p(4 * C);
            l.fcp_w = p(4 * C * C);
            l.fcp_b = p(C);
            l.ln1_out.resize(N * C);
            l.ln1_mean.resize(N);
            l.ln1_rstd.resize(N);
            l.qkv.resize(N * 3 * C);
            l.att.resize(N * C);
            l.lse.resize(B * H * T);
            l.att_proj.resize(N * C);
            l.res1.resize(N * C);
            l.ln2_out.resize(N * C);
            l.ln2_mean.resize(N);
            l.ln2_rstd.resize(N);
            l.fc.resize(N * 4 * C);
            l.gelu.resize(N * 4 * C);
            l.res2.resize(N * C);
        }
        x0.resize(N * C);
        lnf_out.resize(N * C);
        lnf_mean.resize(N);
        lnf_rstd.resize(N);
        logits.resize(std::size_t(N) * V);
        losses.resize(N);
        tokens.resize(N);
        targets.resize(N);
        for (int i = 0; i < N; ++i) {
            tokens[i] = (i * 31 + 7) % V;
            targets[i] = (i * 17 + 3) % V;
        }
        const std::size_t nparams = std::size_t(V) * C + T * C + 2 * C +
                                    L * (12 * C * C + 13 * C);
        dparams.resize(nparams);
        m.resize(nparams);
        v.resize(nparams);
        params_flat = p(nparams);
        d_res.resize(N * C);
        d_tmp.resize(N * C);
        d_big.resize(N * 4 * C);
        d_big2.resize(N * 4 * C);
        d_qkv.resize(N * 3 * C);
        d_ln.resize(N * C);
    }

    void step(Backend& cpu, int64_t step_index) {
        // ---- forward
        cpu.embedding_forward(x0.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
        const float* x = x0.data();
        for (auto& l : layers) {
            cpu.layernorm_forward(l.ln1_out.data(), l.ln1_mean.data(), l.ln1_rstd.data(), x,
                                  l.ln1_w.data(), l.ln1_b.data(), N, C);
            cpu.matmul_forward(l.qkv.data(), l.ln1_out.data(), l.qkv_w.data(), l.qkv_b.data(), N,
                               C, 3 * C);
            cpu.attention_forward(l.att.data(), l.lse.data(), l.qkv.data(), B, T, C, H, true);
            cpu.matmul_forward(l.att_proj.data(), l.att.data(), l.proj_w.data(), l.proj_b.data(),
                               N, C, C);
            cpu.add(l.res1.data(), x, l.att_proj.data(), N * C);
            cpu.layernorm_forward(l.ln2_out.data(), l.ln2_mean.data(), l.ln2_rstd.data(),
                                  l.res1.data(), l.ln2_w.data(), l.ln2_b.data(), N, C);
            cpu.matmul_forward(l.fc.data(), l.ln2_out.data(), l.fc_w.data(), l.fc_b.data(), N, C,
                               4 * C);
            cpu.gelu_forward(l.gelu.data(), l.fc.data(), std::size_t(N) * 4 * C);
            cpu.matmul_forward(l.res2.data(), l.gelu.data(), l.fcp_w.data(), l.fcp_b.data(), N,
                               4 * C, C);
            cpu.add(l.res2.data(), l.res2.data(), l.res1.data(), N * C);
            x = l.res2.data();
        }
        cpu.layernorm_forward(lnf_out.data(), lnf_mean.data(), lnf_rstd.data(), x, lnf_w.data(),
                              lnf_b.data(), N, C);
        cpu.matmul_forward(logits.data(), lnf_out.data(), wte.data(), nullptr, N, C, V);
        cpu.softmax_crossentropy(losses.data(), logits.data(), nullptr, logits.data(),
                                 targets.data(), N, V, 1.0f / N);
        // ---- backward (gradients land in slices of one flat buffer)
        cpu.zero(dparams.data(), dparams.size() * sizeof(float));
        float* g = dparams.data();
        auto take = [&](std::size_t n) { float* r = g; g += n; return r; };
        float* dwte = take(V * C);
        float* dwpe = take(T * C);
        float* dlnf_w = take(C);
        float* dlnf_b = take(C);
        cpu.zero(d_ln.data(), d_ln.size() * sizeof(float));
        cpu.matmul_backward(d_ln.data(), dwte, nullptr, logits.data(), lnf_out.data(), wte.data(),
                            N, C, V);
        cpu.zero(d_res.data(), d_res.size() * sizeof(float));
        cpu.layernorm_backward(d_res.data(), dlnf_w, dlnf_b, d_ln.data(), x, lnf_w.data(),
                               lnf_mean.data(), lnf_rstd.data(), N, C);
        for (int li = L - 1; li >= 0; --li) {
            auto& l = layers[li];
            const float* lin = li == 0 ? x0.data() : layers[li - 1].res2.data();
            float* dqkv_w = take(3 * C * C);
            float* dqkv_b = take(3 * C);
            float* dproj_w = take(C * C);
            float* dproj_b = take(C);
            float* dfc_w = take(4 * C * C);
            float* dfc_b = take(4 * C);
            float* dfcp_w = take(4 * C * C);
            float* dfcp_b = take(C);
            float* dln1_w = take(C);
            float* dln1_b = take(C);
            float* dln2_w = take(C);
            float* dln2_b = take(C);
            // MLP branch: d_res flows to res1 and into the MLP
            cpu.zero(d_big.data(), d_big.size() * sizeof(float));
            cpu.matmul_backward(d_big.data(), dfcp_w, dfcp_b, d_res.data(), l.gelu.data(),
                                l.fcp_w.data(), N, 4 * C, C);
            cpu.zero(d_big2.data(), d_big2.size() * sizeof(float));
            cpu.gelu_backward(d_big2.data(), l.fc.data(), d_big.data(), std::size_t(N) * 4 * C);
            cpu.zero(d_ln.data(), d_ln.size() * sizeof(float));
            cpu.matmul_backward(d_ln.data(), dfc_w, dfc_b, d_big2.data(), l.ln2_out.data(),
                                l.fc_w.data(), N, C, 4 * C);
            cpu.layernorm_backward(d_res.data(), dln2_w, dln2_b, d_ln.data(), l.res1.data(),
                                   l.ln2_w.data(), l.ln2_mean.data(), l.ln2_rstd.data(), N, C);
            // attention branch
            cpu.zero(d_tmp.data(), d_tmp.size() * sizeof(float));
            cpu.matmul_backward(d_tmp.data(), dproj_w, dproj_b, d_res.data(), l.att.data(),
                                l.proj_w.data(), N, C, C);
            cpu.zero(d_qkv.data(), d_qkv.size() * sizeof(float));
            cpu.attention_backward(d_qkv.data(), d_tmp.data(), l.qkv.data(), l.att.data(),
                                   l.lse.data(), B, T, C, H, true);
            cpu.zero(d_ln.data(), d_ln.size() * sizeof(float));
            cpu.matmul_backward(d_ln.data(), dqkv_w, dqkv_b, d_qkv.data(), l.ln1_out.data(),
                                l.qkv_w.data(), N, C, 3 * C);
            cpu.layernorm_backward(d_res.data(), dln1_w, dln1_b, d_ln.data(), lin,
                                   l.ln1_w.data(), l.ln1_mean.data(), l.ln1_rstd.data(), N, C);
        }
        cpu.embedding_backward(dwte, dwpe, d_res.data(), tokens.data(), B, T, C);
        // ---- optimizer
        benchmark::DoNotOptimize(cpu.sum_squares(dparams.data(), dparams.size()));
        cpu.adamw_update(params_flat.data(), dparams.data(), m.data(), v.data(), dparams.size(),
                         1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, step_index);
    }
};

void BM_GptTinyTrainingStepOps(benchmark::State& state) {
    static TinyGpt model;
    int64_t step = 0;
    for (auto _ : state) model.step(backend(), ++step);
    state.counters["tokens/s"] = benchmark::Counter(double(TinyGpt::N) * state.iterations(),
                                                    benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GptTinyTrainingStepOps)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace upcycle

int main(int argc, char** argv) {
    upcycle::prepare_process(argc, argv);  // may re-exec (kernels/cpu/process_setup.h)
    benchmark::AddCustomContext("blas", upcycle::blas_description());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
