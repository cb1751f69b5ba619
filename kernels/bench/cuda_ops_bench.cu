// Microbenchmarks of the CUDA backend ops at gpt-124m shapes (B=8, T=1024, C=768, H=12,
// V=50304, so N = B·T = 8192 rows), with a 16384-row variant for the GEMMs and layernorm.
//
// Run (on a machine with a GPU; without one it prints one line and exits 0):
//   build/upcycle_cuda_bench --benchmark_min_time=0.2
//   build/upcycle_cuda_bench --benchmark_filter=Matmul --benchmark_format=json
// (Google Benchmark 1.7 takes --benchmark_min_time as plain seconds; 1.8+ also takes "0.2s".)
// The context printed first names the device and the row of peak rates the percentages use
// (kernels/cuda/device_peaks.h; e.g. H100 SXM: bf16 dense tensor 989.4 TFLOP/s, fp32 CUDA
// cores 66.9 TFLOP/s, HBM3 3.35 TB/s; a device not in the table gets the H100 SXM's row).
//
// Timing: one untimed warm-up call (cuBLAS heuristics, scratch allocation), then each
// iteration launches the op and calls backend.synchronize(); times are wall clock
// (UseRealTime). The wait is part of every iteration, so for ops of a few microseconds the
// launch and synchronisation latency (a few µs) is part of the time. Device buffers are
// allocated once per benchmark run and filled with normal random numbers (std=0.02 for
// weights, 1 for activations and gradients); backward ops accumulate (+=) into their
// gradients, so repeated iterations keep adding — the same arithmetic and traffic, nothing is
// zeroed inside the timed loop.
//
// Counters (per benchmark row):
//   TFLOP/s   FLOPs per iteration / seconds per iteration, for GEMMs and attention.
//   GB/s      bytes per iteration / seconds per iteration, for the memory-bound ops (1e9 B/s).
//   pct_peak  100 × that rate / the device's peak for it: the bf16 tensor peak for BF16
//             GEMMs and BF16 attention (tensor-core kernels, kernels/cuda/attention_bf16.cu),
//             the fp32 peak for FP32 GEMMs and FP32 attention (CUDA-core kernels), the HBM
//             peak for the memory-bound ops.
// The counters are plain numbers from this file's own wall clock around the timed loop, not
// kIsRate counters, which would print as "412/s".
//
// How work is counted (M rows, K in-features, N out-features; letters B T C H V N as in
// core/backend.h; 4 bytes per float or int32):
//   matmul_forward     2·M·N·K FLOPs (the bias add is not counted).
//   matmul_backward    4·M·N·K FLOPs (dinp and dweight, each 2·M·N·K; dbias not counted).
//   expert_matmul_*    as matmul over the real (non-padding) rows only, R_real = k·tokens:
//                      forward 2·R_real·N·K, backward 4·R_real·N·K (padding rows are
//                      multiplied too but not counted).
//   attention          causal: only the unmasked half of the T×T scores counts. Forward
//                      2·B·T²·C (q·kᵀ and P·v), backward 2.5× that (five T×T×hs products).
//   Bytes are each tensor read once plus each tensor written once (the minimum traffic;
//   scratch a kernel may keep in global memory is not counted):
//   layernorm_forward  4·(2·N·C + 2·N + 2·C): read inp, weight, bias; write out, mean, rstd.
//   layernorm_backward 4·(4·N·C + 2·N + 5·C): read dout, inp, mean, rstd, weight; read and
//                      write dinp, dweight, dbias (they accumulate).
//   softmax_crossentropy  4·(2·N·V + 2·N): read logits, targets; write dlogits, losses. Run as
//                      training runs it: dlogits overwrite the logits in place, no argmax.
//   adamw_update       4·7·n: read params, grads, m, v; write params, m, v.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_peaks.h"

namespace upcycle {
namespace {

// ---- gpt-124m shapes ---------------------------------------------------------------------------

constexpr int kBatch = 8;                    // B
constexpr int kTokens = 1024;                // T (context length)
constexpr int kShortTokens = 256;            // T of the attention scaling point
constexpr int kChannels = 768;               // C
constexpr int kHeads = 12;                   // H
constexpr int kVocab = 50304;                // V (50257 padded to a multiple of 128)
constexpr int kLayers = 12;                  // L, for the parameter count
constexpr int kRows = kBatch * kTokens;      // N = B·T = 8192
constexpr int kRowsLarge = 2 * kRows;        // 16384: a bigger batch for the GEMMs, layernorm
constexpr bool kCausal = true;               // GPT attention

// Parameters of the tied-embedding GPT: wte [V,C], wpe [T,C], per layer qkv, attn proj, fc,
// mlp proj weights (12·C²) and biases plus two layernorms (13·C), final layernorm (2·C).
constexpr std::size_t kGptParameters =
    std::size_t(kVocab) * kChannels + std::size_t(kTokens) * kChannels +
    std::size_t(kLayers) * (12 * std::size_t(kChannels) * kChannels + 13 * kChannels) +
    2 * kChannels;  // = 124,475,904

// ---- peak rates --------------------------------------------------------------------------------

constexpr double kTera = 1e12;
constexpr double kGiga = 1e9;
constexpr double kPercent = 100.0;
struct PeakRates {
    std::string table;  // which table and why, for the printed context
    double bf16_flops = 0, fp32_flops = 0, hbm_bytes_per_second = 0;
};

PeakRates& device_peaks() {
    static PeakRates peaks;
    return peaks;
}

// The device's row of kernels/cuda/device_peaks.h; an unknown device is measured against
// the H100 SXM's figures, and the printed context says so.
PeakRates peaks_for_device(const std::string& device_name) {
    const auto found = find_device_peaks(device_name);
    const DevicePeaks row = found ? *found : *find_device_peaks("H100");
    PeakRates peaks;
    peaks.bf16_flops = row.bf16_flops;
    peaks.fp32_flops = row.fp32_flops;
    peaks.hbm_bytes_per_second = row.memory_bytes_per_second;
    char text[200];
    std::snprintf(text, sizeof(text),
                  "%s%s: bf16 dense %.1f TFLOP/s, fp32 %.1f TFLOP/s, memory %.2f TB/s",
                  row.name, found ? "" : " (device not in the table; its figures are used)",
                  row.bf16_flops / kTera, row.fp32_flops / kTera,
                  row.memory_bytes_per_second / kTera);
    peaks.table = text;
    return peaks;
}

// ---- backend, buffers, random data -------------------------------------------------------------

// Created on first use, after main has checked that a device exists (the constructor throws
// without one).
CudaBackend& backend() {
    static CudaBackend cuda;
    return cuda;
}

// A device array from backend.allocate, returned on scope exit.
template <typename T>
class DeviceArray {
public:
    explicit DeviceArray(std::size_t count)
        : count_(count), ptr_(static_cast<T*>(backend().allocate(count * sizeof(T)))) {}
    ~DeviceArray() { backend().deallocate(ptr_); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;

    T* data() const { return ptr_; }
    std::size_t count() const { return count_; }

private:
    std::size_t count_;
    T* ptr_;
};
using DeviceFloats = DeviceArray<float>;
using DeviceInts = DeviceArray<int32_t>;

constexpr float kWeightScale = 0.02f;     // std of random weights
constexpr float kActivationScale = 1.0f;  // std of random activations and gradients
// Seeds, one per role, so that no two operands of an op hold the same numbers.
constexpr unsigned kSeedInput = 1, kSeedWeight = 2, kSeedBias = 3, kSeedGradient = 4,
                   kSeedState = 5;

// Normal random numbers are generated on the host in one block of this many floats per
// (scale, seed), kept for the whole run, and uploaded as many times as a buffer needs: the
// largest buffers (the 16384×50304 head output and its gradient, 3.3 GB each) would otherwise
// take tens of seconds of std::normal_distribution per benchmark run. The ops' speed does not
// depend on where values repeat.
constexpr std::size_t kRandomBlockFloats = std::size_t(1) << 22;  // 16 MiB

const std::vector<float>& normal_block(float scale, unsigned seed) {
    static std::map<std::pair<float, unsigned>, std::vector<float>> blocks;
    auto [it, inserted] = blocks.try_emplace({scale, seed});
    if (inserted) {
        std::mt19937 rng(seed);
        std::normal_distribution<float> dist(0.0f, scale);
        it->second.resize(kRandomBlockFloats);
        for (float& x : it->second) x = dist(rng);
    }
    return it->second;
}

void fill_normal(const DeviceFloats& buffer, float scale, unsigned seed) {
    const std::vector<float>& block = normal_block(scale, seed);
    for (std::size_t offset = 0; offset < buffer.count(); offset += block.size()) {
        const std::size_t count = std::min(block.size(), buffer.count() - offset);
        backend().upload(buffer.data() + offset, block.data(), count * sizeof(float));
    }
}

// Uniform random class indices in [0, classes).
void fill_targets(const DeviceInts& buffer, int classes, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> dist(0, classes - 1);
    std::vector<int32_t> host(buffer.count());
    for (int32_t& t : host) t = dist(rng);
    backend().upload(buffer.data(), host.data(), host.size() * sizeof(int32_t));
}

// ---- timing and counters -----------------------------------------------------------------------

// The timed loop of every benchmark: launch the op, wait for the GPU. One untimed warm-up call
// first. Returns the mean wall seconds per iteration over the same loop that UseRealTime
// times, for the counters.
template <typename Launch>
double seconds_per_iteration(benchmark::State& state, const Launch& launch) {
    launch();
    backend().synchronize();
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) {
        launch();
        backend().synchronize();
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return elapsed.count() / static_cast<double>(std::max<benchmark::IterationCount>(
                                 state.iterations(), 1));
}

void report_compute(benchmark::State& state, double seconds, double flops, double peak_flops) {
    const double flops_per_second = flops / seconds;
    state.counters["TFLOP/s"] = flops_per_second / kTera;
    state.counters["pct_peak"] = kPercent * flops_per_second / peak_flops;
}

void report_memory(benchmark::State& state, double seconds, double bytes) {
    const double bytes_per_second = bytes / seconds;
    state.counters["GB/s"] = bytes_per_second / kGiga;
    state.counters["pct_peak"] =
        kPercent * bytes_per_second / device_peaks().hbm_bytes_per_second;
}

constexpr double kFloatBytes = sizeof(float);

// ---- matmul: args M, K, N, bias, bf16 ----------------------------------------------------------

// The linear layers of one gpt-124m block, and the tied head (which has no bias: its dbias
// reduction would be a whole extra pass over the M×V gradient).
struct LinearShape {
    const char* name;
    int in_features;   // K
    int out_features;  // N
    bool bias;
};
constexpr LinearShape kGptLinears[] = {
    {"qkv", kChannels, 3 * kChannels, true},
    {"attn_proj", kChannels, kChannels, true},
    {"fc", kChannels, 4 * kChannels, true},
    {"mlp_proj", 4 * kChannels, kChannels, true},
    {"lm_head", kChannels, kVocab, false},
};

enum MatmulArg { kArgM, kArgK, kArgN, kArgBias, kArgBf16 };

struct MatmulCase {
    int M, K, N;
    bool bias;
    Precision precision;
    explicit MatmulCase(benchmark::State& state)
        : M(int(state.range(kArgM))), K(int(state.range(kArgK))), N(int(state.range(kArgN))),
          bias(state.range(kArgBias) != 0),
          precision(state.range(kArgBf16) != 0 ? Precision::BF16 : Precision::FP32) {
        std::string label = precision_name(precision);
        for (const LinearShape& shape : kGptLinears) {
            if (shape.in_features == K && shape.out_features == N) {
                label += std::string(" ") + shape.name;
            }
        }
        state.SetLabel(label);
        backend().set_precision(precision);
    }
    double peak_flops() const {
        return precision == Precision::BF16 ? device_peaks().bf16_flops
                                            : device_peaks().fp32_flops;
    }
};

void BM_MatmulForward(benchmark::State& state) {
    const MatmulCase c(state);
    DeviceFloats inp(std::size_t(c.M) * c.K), weight(std::size_t(c.N) * c.K), bias(c.N),
        out(std::size_t(c.M) * c.N);
    fill_normal(inp, kActivationScale, kSeedInput);
    fill_normal(weight, kWeightScale, kSeedWeight);
    fill_normal(bias, kWeightScale, kSeedBias);
    const float* bias_or_null = c.bias ? bias.data() : nullptr;
    const double seconds = seconds_per_iteration(state, [&] {
        backend().matmul_forward(out.data(), inp.data(), weight.data(), bias_or_null, c.M, c.K,
                                 c.N);
    });
    report_compute(state, seconds, 2.0 * c.M * c.N * c.K, c.peak_flops());
}

void BM_MatmulBackward(benchmark::State& state) {
    const MatmulCase c(state);
    DeviceFloats inp(std::size_t(c.M) * c.K), weight(std::size_t(c.N) * c.K),
        dout(std::size_t(c.M) * c.N), dinp(inp.count()), dweight(weight.count()), dbias(c.N);
    fill_normal(inp, kActivationScale, kSeedInput);
    fill_normal(weight, kWeightScale, kSeedWeight);
    fill_normal(dout, kActivationScale, kSeedGradient);
    backend().zero(dinp.data(), dinp.count() * sizeof(float));
    backend().zero(dweight.data(), dweight.count() * sizeof(float));
    backend().zero(dbias.data(), dbias.count() * sizeof(float));
    float* dbias_or_null = c.bias ? dbias.data() : nullptr;
    const double seconds = seconds_per_iteration(state, [&] {
        backend().matmul_backward(dinp.data(), dweight.data(), dbias_or_null, dout.data(),
                                  inp.data(), weight.data(), c.M, c.K, c.N);
    });
    report_compute(state, seconds, 4.0 * c.M * c.N * c.K, c.peak_flops());
}

void matmul_cases(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N", "bias", "bf16"});
    for (const int rows : {kRows, kRowsLarge}) {
        for (const LinearShape& shape : kGptLinears) {
            for (const Precision precision : {Precision::FP32, Precision::BF16}) {
                b->Args({rows, shape.in_features, shape.out_features, shape.bias ? 1 : 0,
                         precision == Precision::BF16 ? 1 : 0});
            }
        }
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_MatmulForward)->Apply(matmul_cases);
BENCHMARK(BM_MatmulBackward)->Apply(matmul_cases);

// ---- expert GEMMs of an MoE MLP, padded layout: args E, K, N, bf16 ----------------------------

// 64K tokens routed top-2 with capacity factor 1.25 over E experts whose MLPs have gpt-124m's
// widths: each expert owns P = ceil(k·tokens·cf/E) rows (E = 8: 20480, E = 32: 5120) and the
// routing is balanced, k·tokens/E real rows per expert (nothing dropped; the rest of each
// block, 20% of it, is padding). The padded path multiplies whole blocks (static shapes), so
// the rate of the padded work is cf × the reported one.
constexpr int kMoeTokens = 65536;
constexpr int kMoeTopK = 2;
constexpr double kMoeCapacityFactor = 1.25;

enum ExpertMatmulArg { kArgExperts, kArgExpertK, kArgExpertN, kArgExpertBf16 };

struct ExpertMatmulCase {
    int E, K, N;
    Precision precision;
    int P;     // rows per expert block
    int real;  // real rows per expert
    // One expert's parameters as the MoE layer stores them (fc.weight [4C,C], fc.bias,
    // proj.weight [C,4C], proj.bias), so W_e and b_e sit at that stride; the benchmarked
    // layer's weight first, its bias right after.
    std::size_t stride;
    DeviceFloats params, grads;          // [E·stride] each
    DeviceFloats inp, out, dout, dinp;   // [R,K], [R,N], [R,N], [R,K], R = E·P
    DeviceInts offset, count;                          // [E+1], [E]
    explicit ExpertMatmulCase(benchmark::State& state)
        : E(int(state.range(kArgExperts))), K(int(state.range(kArgExpertK))),
          N(int(state.range(kArgExpertN))),
          precision(state.range(kArgExpertBf16) != 0 ? Precision::BF16 : Precision::FP32),
          P(int(std::ceil(kMoeTopK * double(kMoeTokens) * kMoeCapacityFactor / E))),
          real(kMoeTopK * kMoeTokens / E),
          stride(2 * std::size_t(kChannels) * 4 * kChannels + 5 * std::size_t(kChannels)),
          params(E * stride), grads(E * stride), inp(std::size_t(E) * P * K),
          out(std::size_t(E) * P * N), dout(out.count()), dinp(inp.count()), offset(E + 1),
          count(E) {
        state.SetLabel(std::string(precision_name(precision)) +
                       (K == kChannels ? " fc" : " proj") + " P=" + std::to_string(P));
        backend().set_precision(precision);
        fill_normal(params, kWeightScale, kSeedWeight);
        fill_normal(inp, kActivationScale, kSeedInput);
        fill_normal(dout, kActivationScale, kSeedGradient);
        // padding rows: zeros in inp (as gather_rows leaves them) and in dout (the contract)
        for (int e = 0; e < E; ++e) {
            const std::size_t first = std::size_t(e) * P + real, rows = std::size_t(P - real);
            backend().zero(inp.data() + first * K, rows * K * sizeof(float));
            backend().zero(dout.data() + first * N, rows * N * sizeof(float));
        }
        backend().zero(grads.data(), grads.count() * sizeof(float));
        backend().zero(dinp.data(), dinp.count() * sizeof(float));
        std::vector<int32_t> host_offset(E + 1), host_count(E, real);
        for (int e = 0; e <= E; ++e) host_offset[e] = e * P;
        backend().upload(offset.data(), host_offset.data(), host_offset.size() * sizeof(int32_t));
        backend().upload(count.data(), host_count.data(), host_count.size() * sizeof(int32_t));
    }
    ExpertGroups groups() const { return {E, P, E * P, offset.data(), count.data()}; }
    std::size_t bias_offset() const { return std::size_t(N) * K; }
    // FLOPs of one product over the real rows only
    double real_flops() const { return 2.0 * double(E) * real * double(N) * K; }
    double peak_flops() const {
        return precision == Precision::BF16 ? device_peaks().bf16_flops
                                            : device_peaks().fp32_flops;
    }
};

void BM_ExpertMatmulForward(benchmark::State& state) {
    ExpertMatmulCase c(state);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().expert_matmul_forward(c.out.data(), c.inp.data(), c.params.data(), c.stride,
                                        c.params.data() + c.bias_offset(), c.stride, c.groups(),
                                        c.K, c.N);
    });
    report_compute(state, seconds, c.real_flops(), c.peak_flops());
}

void BM_ExpertMatmulBackward(benchmark::State& state) {
    ExpertMatmulCase c(state);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().expert_matmul_backward(c.dinp.data(), c.grads.data(),
                                         c.grads.data() + c.bias_offset(), c.dout.data(),
                                         c.inp.data(), c.params.data(), c.stride, c.stride,
                                         c.groups(), c.K, c.N);
    });
    report_compute(state, seconds, 2.0 * c.real_flops(), c.peak_flops());
}

void expert_matmul_cases(benchmark::internal::Benchmark* b) {
    b->ArgNames({"E", "K", "N", "bf16"});
    for (const int experts : {8, 32}) {
        for (const auto& [in, out] : {std::pair{kChannels, 4 * kChannels},      // fc
                                      std::pair{4 * kChannels, kChannels}}) {    // proj
            for (const Precision precision : {Precision::FP32, Precision::BF16}) {
                b->Args({experts, in, out, precision == Precision::BF16 ? 1 : 0});
            }
        }
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_ExpertMatmulForward)->Apply(expert_matmul_cases);
BENCHMARK(BM_ExpertMatmulBackward)->Apply(expert_matmul_cases);

// ---- attention (causal): args B, T, C, H, bf16 ------------------------------------------------

enum AttentionArg { kArgBatch, kArgTokens, kArgChannels, kArgHeads, kArgAttentionBf16 };

struct AttentionCase {
    int B, T, C, H;
    Precision precision;  // BF16: the tensor-core kernels (head size C/H = 64 here qualifies)
    DeviceFloats qkv, out, lse, dout, dqkv;  // [B,T,3C], [B,T,C], [B,H,T], [B,T,C], [B,T,3C]
    explicit AttentionCase(benchmark::State& state)
        : B(int(state.range(kArgBatch))), T(int(state.range(kArgTokens))),
          C(int(state.range(kArgChannels))), H(int(state.range(kArgHeads))),
          precision(state.range(kArgAttentionBf16) != 0 ? Precision::BF16 : Precision::FP32),
          qkv(std::size_t(B) * T * 3 * C),
          out(std::size_t(B) * T * C),
          lse(std::size_t(B) * H * T),
          dout(std::size_t(B) * T * C),
          dqkv(qkv.count()) {
        state.SetLabel(precision_name(precision));
        backend().set_precision(precision);
        fill_normal(qkv, kActivationScale, kSeedInput);
        fill_normal(dout, kActivationScale, kSeedGradient);
        backend().zero(dqkv.data(), dqkv.count() * sizeof(float));
    }
    double peak_flops() const {
        return precision == Precision::BF16 ? device_peaks().bf16_flops
                                            : device_peaks().fp32_flops;
    }
    // q·kᵀ and P·v, 2·T·T·hs each per head, over the unmasked half when causal.
    double forward_flops() const {
        const double full = 4.0 * B * double(T) * T * C;
        return kCausal ? full / 2.0 : full;
    }
};

constexpr double kAttentionBackwardFlopRatio = 2.5;  // five T×T×hs products against two

void BM_AttentionForward(benchmark::State& state) {
    AttentionCase a(state);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().attention_forward(a.out.data(), a.lse.data(), a.qkv.data(), a.B, a.T, a.C, a.H,
                                    kCausal);
    });
    report_compute(state, seconds, a.forward_flops(), a.peak_flops());
}

void BM_AttentionBackward(benchmark::State& state) {
    AttentionCase a(state);
    backend().attention_forward(a.out.data(), a.lse.data(), a.qkv.data(), a.B, a.T, a.C, a.H,
                                kCausal);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().attention_backward(a.dqkv.data(), a.dout.data(), a.qkv.data(), a.out.data(),
                                     a.lse.data(), a.B, a.T, a.C, a.H, kCausal);
    });
    report_compute(state, seconds, kAttentionBackwardFlopRatio * a.forward_flops(),
                   a.peak_flops());
}

void attention_cases(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "C", "H", "bf16"});
    for (const Precision precision : {Precision::FP32, Precision::BF16}) {
        const int bf16 = precision == Precision::BF16 ? 1 : 0;
        b->Args({kBatch, kTokens, kChannels, kHeads, bf16});
        b->Args({kBatch, kShortTokens, kChannels, kHeads, bf16});  // T/4: 16× fewer FLOPs
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_AttentionForward)->Apply(attention_cases);
BENCHMARK(BM_AttentionBackward)->Apply(attention_cases);

// ---- layernorm: args N, C ----------------------------------------------------------------------

struct LayerNormCase {
    int N, C;
    DeviceFloats inp, weight, bias, out, mean, rstd;  // [N,C], [C], [C], [N,C], [N], [N]
    DeviceFloats dout, dinp, dweight, dbias;          // [N,C], [N,C], [C], [C]
    explicit LayerNormCase(const benchmark::State& state)
        : N(int(state.range(0))), C(int(state.range(1))),
          inp(std::size_t(N) * C), weight(C), bias(C), out(inp.count()), mean(N), rstd(N),
          dout(inp.count()), dinp(inp.count()), dweight(C), dbias(C) {
        fill_normal(inp, kActivationScale, kSeedInput);
        fill_normal(weight, kWeightScale, kSeedWeight);
        fill_normal(bias, kWeightScale, kSeedBias);
        fill_normal(dout, kActivationScale, kSeedGradient);
        backend().zero(dinp.data(), dinp.count() * sizeof(float));
        backend().zero(dweight.data(), dweight.count() * sizeof(float));
        backend().zero(dbias.data(), dbias.count() * sizeof(float));
    }
    double NC() const { return double(N) * C; }
};

void BM_LayerNormForward(benchmark::State& state) {
    LayerNormCase l(state);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().layernorm_forward(l.out.data(), l.mean.data(), l.rstd.data(), l.inp.data(),
                                    l.weight.data(), l.bias.data(), l.N, l.C);
    });
    report_memory(state, seconds, kFloatBytes * (2.0 * l.NC() + 2.0 * l.N + 2.0 * l.C));
}

void BM_LayerNormBackward(benchmark::State& state) {
    LayerNormCase l(state);
    backend().layernorm_forward(l.out.data(), l.mean.data(), l.rstd.data(), l.inp.data(),
                                l.weight.data(), l.bias.data(), l.N, l.C);
    const double seconds = seconds_per_iteration(state, [&] {
        backend().layernorm_backward(l.dinp.data(), l.dweight.data(), l.dbias.data(),
                                     l.dout.data(), l.inp.data(), l.weight.data(), l.mean.data(),
                                     l.rstd.data(), l.N, l.C);
    });
    report_memory(state, seconds, kFloatBytes * (4.0 * l.NC() + 2.0 * l.N + 5.0 * l.C));
}

void layernorm_cases(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "C"});
    b->Args({kRows, kChannels});
    b->Args({kRowsLarge, kChannels});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_LayerNormForward)->Apply(layernorm_cases);
BENCHMARK(BM_LayerNormBackward)->Apply(layernorm_cases);

// ---- softmax + cross-entropy with gradient: args N, V ------------------------------------------

void BM_SoftmaxCrossEntropy(benchmark::State& state) {
    const int N = int(state.range(0)), V = int(state.range(1));
    DeviceFloats logits(std::size_t(N) * V), losses(N);  // [N,V], [N]
    DeviceInts targets(N);                               // [N]
    fill_normal(logits, kActivationScale, kSeedInput);
    fill_targets(targets, V, kSeedState);
    const float grad_scale = 1.0f / float(N);  // mean loss over the rows, as training
    // In place, as training runs it: after the first call the "logits" are last call's
    // gradients; the arithmetic and the memory traffic are the same.
    const double seconds = seconds_per_iteration(state, [&] {
        backend().softmax_crossentropy(losses.data(), logits.data(), nullptr, logits.data(),
                                       targets.data(), N, V, grad_scale);
    });
    report_memory(state, seconds, kFloatBytes * (2.0 * double(N) * V + 2.0 * N));
}
BENCHMARK(BM_SoftmaxCrossEntropy)->ArgNames({"N", "V"})->Args({kRows, kVocab})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- AdamW over every gpt-124m parameter: arg n ------------------------------------------------

constexpr float kLearningRate = 6e-4f;
constexpr float kBeta1 = 0.9f;
constexpr float kBeta2 = 0.95f;
constexpr float kAdamEps = 1e-8f;
constexpr float kWeightDecay = 0.1f;
constexpr float kGradScale = 1.0f;
constexpr double kAdamWTensorPasses = 7.0;  // read params, grads, m, v; write params, m, v

void BM_AdamW(benchmark::State& state) {
    const std::size_t n = std::size_t(state.range(0));
    DeviceFloats params(n), grads(n), m(n), v(n);
    fill_normal(params, kWeightScale, kSeedWeight);
    fill_normal(grads, kWeightScale, kSeedGradient);
    backend().zero(m.data(), n * sizeof(float));
    backend().zero(v.data(), n * sizeof(float));
    int64_t step = 0;  // AdamW steps count from 1
    const double seconds = seconds_per_iteration(state, [&] {
        backend().adamw_update(params.data(), grads.data(), m.data(), v.data(), n, kLearningRate,
                               kBeta1, kBeta2, kAdamEps, kWeightDecay, kGradScale, ++step);
    });
    report_memory(state, seconds, kAdamWTensorPasses * kFloatBytes * double(n));
}
BENCHMARK(BM_AdamW)->ArgName("n")->Arg(int64_t(kGptParameters))
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- device check and context ------------------------------------------------------------------

// Returns false (after printing why) when no CUDA device is usable; otherwise records the
// device and the table of peaks in the benchmark context.
bool describe_device() {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0) {
        const std::string why = status != cudaSuccess ? cudaGetErrorString(status)
                                                      : "no device is visible";
        cudaGetLastError();  // clear the error state
        std::fprintf(stderr,
                     "upcycle_cuda_bench: no usable CUDA device (%s); nothing to benchmark\n",
                     why.c_str());
        return false;
    }
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));  // CudaBackend() uses device 0
    device_peaks() = peaks_for_device(prop.name);
    constexpr std::size_t kGiB = std::size_t(1) << 30;
    benchmark::AddCustomContext(
        "cuda_device", std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
                           std::to_string(prop.minor) + ", " +
                           std::to_string(prop.multiProcessorCount) + " SMs, " +
                           std::to_string(prop.totalGlobalMem / kGiB) + " GiB)");
    benchmark::AddCustomContext("peak_table", device_peaks().table);
    return true;
}

}  // namespace
}  // namespace upcycle

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    try {
        if (upcycle::describe_device()) benchmark::RunSpecifiedBenchmarks();
    } catch (const std::exception& e) {  // a CUDA error, or out of memory
        std::fprintf(stderr, "upcycle_cuda_bench: %s\n", e.what());
        benchmark::Shutdown();
        return 1;
    }
    benchmark::Shutdown();
    return 0;
}
