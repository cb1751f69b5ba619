// upcycle bench --model NAME [--steps N] [--warmup N] [--batch B] [--json] [--device cpu]
// Times whole training steps (forward + backward + AdamW) of a preset model on random tokens
// and, in the same process, OpenBLAS sgemm at the model's MLP shape, so the ratio between
// the two is meaningful on a shared, noisy machine.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/config.h"
#include "core/flops.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"
#include "core/rng.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/blas_setup.h"
#include "runner/commands.h"

namespace upcycle::cli {

namespace {

struct BenchArgs {
    std::string model = "gpt-tiny";
    int steps = 0;   // 0: a default by model size
    int warmup = 2;
    int batch = 0;   // 0: the preset's
    bool json = false;
    std::string device = "cpu";
};

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int run_bench(const BenchArgs& args) {
    const ModelPreset& preset = find_model_preset(args.model);
    const ModelConfig& mc = preset.model;
    const int B = args.batch > 0 ? args.batch : preset.batch_size;
    const int T = mc.context;
    const double flops_token = flops_per_token(mc).training;
    const int steps = args.steps > 0 ? args.steps : (flops_token * B * T > 1e12 ? 3 : 20);
    auto backend = make_backend(args.device);

    Gpt model(*backend, mc, B);
    model.init_weights(1);
    AdamW optimizer(*backend, model.num_parameters());
    TrainConfig train;  // defaults: AdamW betas, clip 1.0, weight decay 0.1
    Rng rng(7);
    std::vector<int32_t> inputs(static_cast<std::size_t>(B) * T), targets(inputs.size());
    for (auto& x : inputs) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(mc.vocab_size)));
    for (auto& x : targets) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(mc.vocab_size)));

    using Clock = std::chrono::steady_clock;
    std::vector<double> step_seconds;
    double last_loss = 0;
    for (int i = 0; i < args.warmup + steps; ++i) {
        const auto start = Clock::now();
        const auto stats = model.forward(inputs, targets, B, Pass::Train);
        model.backward();
        optimizer.update(model.layout(), model.parameters(), model.gradients(), train, 1e-4);
        backend->synchronize();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        if (i >= args.warmup) step_seconds.push_back(seconds);
        last_loss = stats.mean_loss();
    }
    const double step = median(step_seconds);
    const double tokens_per_second = B * T / step;
    const double gflops = flops_token * B * T / step / 1e9;
    // sgemm at the MLP up-projection: [B·T, C] · [4C, C]ᵀ
    const int M = B * T, N = 4 * mc.channels, K = mc.channels;
    const double sgemm_gflops = measure_sgemm_gflops(M, N, K, 1.0);

    if (args.json) {
        fmt::print("{}\n", nlohmann::json{{"model", preset.name},
                                          {"batch", B},
                                          {"context", T},
                                          {"steps_timed", steps},
                                          {"median_step_seconds", step},
                                          {"tokens_per_second", tokens_per_second},
                                          {"training_flops_per_token", flops_token},
                                          {"achieved_gflops", gflops},
                                          {"sgemm_shape", {M, N, K}},
                                          {"sgemm_gflops", sgemm_gflops},
                                          {"fraction_of_sgemm", gflops / sgemm_gflops},
                                          {"threads", omp_get_max_threads()},
                                          {"backend", backend->describe()},
                                          {"last_loss", last_loss}}
                               .dump(2));
        return 0;
    }
    fmt::print("model {} (L={} C={} H={} T={} V={}), batch {}, {} parameters\n", preset.name,
               mc.layers, mc.channels, mc.heads, T, mc.vocab_size, B, model.num_parameters());
    fmt::print("backend {}\n", backend->describe());
    fmt::print("training step (forward + backward + AdamW), median of {}: {:.2f} ms\n", steps,
               step * 1e3);
    fmt::print("tokens/s            {:.0f}\n", tokens_per_second);
    fmt::print("FLOPs per token     {:.4g} (training = 3 × forward, core/flops.h)\n", flops_token);
    fmt::print("achieved            {:.1f} GFLOP/s\n", gflops);
    fmt::print("sgemm {}x{}x{}  {:.1f} GFLOP/s (same process)\n", M, N, K, sgemm_gflops);
    fmt::print("fraction of sgemm   {:.1f}%\n", 100.0 * gflops / sgemm_gflops);
    return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
    auto args = std::make_shared<BenchArgs>();
    auto* sub = app.add_subcommand("bench", "Time training steps of a preset model");
    sub->add_option("--model", args->model, "gpt-tiny | gpt-small | gpt-124m");
    sub->add_option("--steps", args->steps, "timed steps (default 20, 3 for large models)");
    sub->add_option("--warmup", args->warmup, "untimed steps first");
    sub->add_option("--batch", args->batch, "batch size (default: the preset's)");
    sub->add_flag("--json", args->json, "print JSON");
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    return [args] { return run_bench(*args); };
}

}  // namespace upcycle::cli
