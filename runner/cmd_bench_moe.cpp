// upcycle bench-moe [--tokens N] [--channels C] [--experts E] [--k K] [--capacity-factor CF]
//                   [--router topk|expert_choice] [--steps S] [--warmup W]
//                   [--device cpu|cuda[:N]] [--precision fp32|bf16] [--json]
// Times one MoE layer on its own — forward and backward on random inputs — phase by phase:
// routing, dispatch, the experts' GEMMs and combine, each with its share of the layer's
// time, so that the next optimisation is obvious. Every phase boundary synchronises the
// backend (MoeLayer::time_phases), so the phases' sum is a little above an unsynchronised
// pass. Defaults: the shape on a GPU (64K tokens, C 768), a small one on the CPU.
#include <algorithm>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/errors.h"
#include "core/moe/moe_layer.h"
#include "core/rng.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct BenchMoeArgs {
    int tokens = 0;    // 0: 65536 on a GPU, 4096 on the CPU
    int channels = 0;  // 0: 768 on a GPU, 128 on the CPU
    int experts = 8;
    int k = 2;
    double capacity_factor = 1.25;
    std::string router = "topk";
    int steps = 10;
    int warmup = 2;
    std::string device = "cpu";
    std::string precision = "fp32";
    bool json = false;
};

constexpr std::size_t kPhases = static_cast<std::size_t>(MoePhase::Count);

void check_args(const BenchMoeArgs& a) {
    auto require = [](bool ok, const std::string& key, const std::string& what) {
        if (!ok) throw UserError("", key, what);
    };
    require(a.tokens >= 0, "--tokens", "expected a positive number of tokens");
    require(a.channels >= 0, "--channels", "expected a positive number of channels");
    require(a.experts >= 1, "--experts", "expected at least one expert");
    const RouterKind router = parse_choice<RouterKind>(a.router, "", "--router");
    require(router != RouterKind::TopK || (a.k >= 1 && a.k <= a.experts), "--k",
            fmt::format("expected 1 ≤ k ≤ experts ({}), found {}", a.experts, a.k));
    require(a.steps >= 1, "--steps", "expected at least one timed step");
    require(a.warmup >= 0, "--warmup", "expected a non-negative count");
}

int run_bench_moe(BenchMoeArgs args) {
    check_args(args);
    const Precision precision = parse_choice<Precision>(args.precision, "", "--precision");
    auto backend = make_backend(args.device);
    backend->set_precision(precision);
    const bool on_cpu = backend->kind() == DeviceKind::CPU;
    const int N = args.tokens > 0 ? args.tokens : (on_cpu ? 4096 : 65536);
    const int C = args.channels > 0 ? args.channels : (on_cpu ? 128 : 768);
    const int E = args.experts;

    ModelConfig model;
    model.channels = C;
    model.moe.experts = E;
    model.moe.router = parse_choice<RouterKind>(args.router, "", "--router");
    model.moe.k = model.moe.router == RouterKind::TopK ? args.k : 1;
    model.moe.capacity_factor = args.capacity_factor;
    model.moe.eval_capacity_factor = args.capacity_factor;
    model.moe.combine = Combine::Renormalized;
    MoeLayer layer(*backend, model, N, backend->pads_expert_rows());

    const auto n_params = static_cast<int64_t>(moe_layer_parameters(E, C));
    Rng rng(11);
    auto randn = [&rng](std::size_t n, float scale) {
        std::vector<float> v(n);
        for (auto& x : v) x = scale * rng.normal();
        return v;
    };
    auto params =
        Tensor::from_host(*backend, {n_params}, randn(static_cast<std::size_t>(n_params), 0.02f));
    auto grads = Tensor::zeros(*backend, {n_params});
    const MoeTensors w = moe_tensors_in(params.f32(), E, C), g = moe_tensors_in(grads.f32(), E, C);
    auto x = Tensor::from_host(*backend, {N, C}, randn(static_cast<std::size_t>(N) * C, 1.0f));
    auto dout = Tensor::from_host(*backend, {N, C}, randn(static_cast<std::size_t>(N) * C, 1.0f));
    auto out = Tensor(*backend, {N, C});
    auto dx = Tensor(*backend, {N, C});

    std::vector<std::vector<double>> seconds(kPhases);
    MoePhaseSeconds step{};
    layer.time_phases(&step);
    for (int i = 0; i < args.warmup + args.steps; ++i) {
        step.fill(0.0);
        layer.forward(out.f32(), x.f32(), N, w, args.capacity_factor);
        layer.backward(dx.f32(), dout.f32(), x.f32(), w, g);
        if (i < args.warmup) continue;
        for (std::size_t p = 0; p < kPhases; ++p) seconds[p].push_back(step[p]);
    }
    const RoutingStats& stats = layer.stats();
    // the experts' FLOPs on the kept rows: forward 2·rows·(C·4C + 4C·C), backward twice that
    const double expert_forward_flops = 16.0 * static_cast<double>(stats.assignments_kept) * C * C;
    std::vector<double> medians(kPhases);
    double total = 0;
    for (std::size_t p = 0; p < kPhases; ++p) total += medians[p] = median(seconds[p]);
    auto flops_of = [&](MoePhase phase) {
        if (phase == MoePhase::ExpertsForward) return expert_forward_flops;
        if (phase == MoePhase::ExpertsBackward) return 2 * expert_forward_flops;
        return 0.0;
    };
    const double peak = backend->peak_flops(precision);

    if (args.json) {
        nlohmann::json phases = nlohmann::json::array();
        for (std::size_t p = 0; p < kPhases; ++p) {
            const auto phase = static_cast<MoePhase>(p);
            nlohmann::json row{{"phase", moe_phase_name(phase)},
                               {"median_seconds", medians[p]},
                               {"share", medians[p] / total}};
            if (flops_of(phase) > 0) row["tflops"] = flops_of(phase) / medians[p] / 1e12;
            phases.push_back(row);
        }
        nlohmann::json result{{"tokens", N},
                              {"channels", C},
                              {"experts", E},
                              {"router", args.router},
                              {"k", model.moe.k},
                              {"capacity_factor", args.capacity_factor},
                              {"precision", args.precision},
                              {"backend", backend->describe()},
                              {"padded_rows", backend->pads_expert_rows()},
                              {"steps_timed", args.steps},
                              {"assignments_kept", stats.assignments_kept},
                              {"dropped_fraction", stats.dropped_fraction},
                              {"layer_seconds", total},
                              {"phases", phases}};
        if (peak > 0) result["peak_tflops"] = peak / 1e12;
        fmt::print("{}\n", result.dump(2));
        return 0;
    }
    fmt::print(
        "one MoE layer: {} tokens, C {}, {} experts, {}{}, capacity factor {}, {} rows "
        "({} kept, {:.1f}% dropped), {} GEMMs\n",
        N, C, E, args.router,
        model.moe.router == RouterKind::TopK ? fmt::format(" k={}", model.moe.k) : "",
        args.capacity_factor, backend->pads_expert_rows() ? "padded" : "compact",
        stats.assignments_kept, 100.0 * stats.dropped_fraction, args.precision);
    fmt::print("backend {}\n", backend->describe());
    fmt::print("median over {} steps, each phase between synchronisations:\n", args.steps);
    for (std::size_t p = 0; p < kPhases; ++p) {
        const auto phase = static_cast<MoePhase>(p);
        std::string rate;
        if (flops_of(phase) > 0) {
            const double achieved = flops_of(phase) / medians[p];
            rate = fmt::format("  {:.2f} TFLOP/s", achieved / 1e12);
            if (peak > 0) rate += fmt::format(" ({:.1f}% of peak)", 100.0 * achieved / peak);
        }
        fmt::print("  {:<18} {:>9.3f} ms  {:>5.1f}%{}\n", moe_phase_name(phase), medians[p] * 1e3,
                   100.0 * medians[p] / total, rate);
    }
    fmt::print("  {:<18} {:>9.3f} ms\n", "layer", total * 1e3);
    return 0;
}

}  // namespace

Command add_bench_moe_command(CLI::App& app) {
    auto args = std::make_shared<BenchMoeArgs>();
    auto* sub = app.add_subcommand("bench-moe", "Time one MoE layer, phase by phase");
    sub->add_option("--tokens", args->tokens,
                    "tokens routed (default 65536 on a GPU, 4096 on the CPU)");
    sub->add_option("--channels", args->channels,
                    "model width C (default 768 on a GPU, 128 on the CPU)");
    sub->add_option("--experts", args->experts, "experts E (default 8)");
    sub->add_option("--k", args->k, "experts per token, topk (default 2)");
    sub->add_option("--capacity-factor", args->capacity_factor,
                    "expert capacity factor (default 1.25; ≤ 0: no limit)");
    sub->add_option("--router", args->router, "topk | expert_choice");
    sub->add_option("--steps", args->steps, "timed forward+backward passes (default 10)");
    sub->add_option("--warmup", args->warmup, "untimed passes first (default 2)");
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_option("--precision", args->precision, "GEMM precision: fp32 | bf16");
    sub->add_flag("--json", args->json, "print JSON");
    return [args] { return run_bench_moe(*args); };
}

}  // namespace upcycle::cli
