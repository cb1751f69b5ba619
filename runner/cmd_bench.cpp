// upcycle bench --model NAME [--steps N] [--warmup N] [--batch B] [--micro-batch M] [--json]
//               [--device cpu|cuda[:N]] [--precision fp32|bf16]
//               [--experts E --k K --capacity-factor CF --router topk|expert_choice]
// upcycle bench --plan [--model NAME] --ranks N [--ep M] [--link-gbps G] [--tflops F]
//               (prints the communication plan of N ranks instead of timing: bench_plan.h)
// Times whole training steps (forward + backward + AdamW) of a preset model (a GPT on random
// tokens, a ViT on random images). With --micro-batch, a step accumulates the gradients of
// batch/micro-batch passes, as train.micro_batch does. On the CPU it also times, in the same
// process, OpenBLAS sgemm at the model's MLP shape, so the ratio between the two is
// meaningful on a shared, noisy machine; on a GPU it prints the model FLOPs utilisation
// against the device's dense peak for the precision. With --experts, every other block's
// MLP becomes an MoE layer and the dense preset is timed in the same process too, the two
// interleaved in rounds, so the MoE/dense ratio is fair.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>

#include <fmt/format.h>
#include <omp.h>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/model/gpt.h"
#include "core/model/vit.h"
#include "core/optim/adamw.h"
#include "core/rng.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/blas_setup.h"
#include "runner/bench_plan.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct BenchArgs {
    std::string model = "gpt-tiny";
    int steps = 0;  // 0: a default by model size
    int warmup = 2;
    int batch = 0;        // 0: the preset's
    int micro_batch = 0;  // 0: the whole batch in one pass
    bool json = false;
    std::string device = "cpu";
    std::string precision = "fp32";
    int experts = 0;  // > 0: every other block's MLP becomes an MoE layer
    int k = 2;
    double capacity_factor = 1.25;
    std::string router = "topk";
    double peak_tflops = 0;  // > 0: the MFU yardstick (e.g. a measured matmul peak), else the device's table
};

// One model under test: its training step, timed.
class StepTimer {
public:
    // `batch` examples per step in passes of `micro` examples (batch a multiple of micro).
    StepTimer(Backend& backend, const ModelConfig& config, int batch, int micro)
        : backend_(&backend),
          config_(config),
          B_(batch),
          micro_(micro),
          model_(make_model(backend, config, micro)),
          optimizer_(backend, model_->num_parameters()) {
        const int B = micro;  // the random inputs are one micro-batch, fed every pass
        model_->init_weights(1);
        Rng rng(7);
        if (auto* vit = dynamic_cast<Vit*>(model_.get())) {
            images_.resize(static_cast<std::size_t>(B) * config.image_size * config.image_size);
            for (auto& x : images_) x = rng.normal();
            for (int i = 0; i < B; ++i)
                labels_.push_back(static_cast<int32_t>(rng.below(config.classes)));
            forward_ = [this, vit] { vit->forward(images_, labels_, micro_, Pass::Train); };
        } else {
            auto* gpt = dynamic_cast<Gpt*>(model_.get());
            const auto n = static_cast<std::size_t>(B) * config.context;
            const auto V = static_cast<uint64_t>(config.vocab_size);
            for (std::size_t i = 0; i < n; ++i)
                inputs_.push_back(static_cast<int32_t>(rng.below(V)));
            for (std::size_t i = 0; i < n; ++i)
                labels_.push_back(static_cast<int32_t>(rng.below(V)));
            forward_ = [this, gpt] { gpt->forward(inputs_, labels_, micro_, Pass::Train); };
        }
    }
    void run(int steps, bool record) {
        using Clock = std::chrono::steady_clock;
        for (int i = 0; i < steps; ++i) {
            const auto start = Clock::now();
            const int parts = B_ / micro_;
            for (int part = 0; part < parts; ++part) {
                forward_();
                model_->backward(part == 0 ? Gradients::Overwrite : Gradients::Accumulate);
            }
            optimizer_.update(model_->layout(), model_->parameters(), model_->gradients(), train_,
                              1e-4, 1.0 / parts);
            backend_->synchronize();
            if (record)
                seconds_.push_back(std::chrono::duration<double>(Clock::now() - start).count());
        }
    }
    double median_step() const { return median(seconds_); }
    std::size_t timed() const { return seconds_.size(); }
    double tokens_per_step() const { return static_cast<double>(B_) * tokens_per_example(config_); }
    double flops_per_step() const { return flops_per_token(config_).training * tokens_per_step(); }
    const Model& model() const { return *model_; }

private:
    Backend* backend_;
    ModelConfig config_;
    int B_, micro_;
    std::unique_ptr<Model> model_;
    AdamW optimizer_;
    TrainConfig train_;            // defaults: AdamW betas, clip 1.0, weight decay 0.1
    std::vector<int32_t> inputs_;  // GPT: token ids [micro,T]
    std::vector<float> images_;    // ViT: [micro, image, image]
    std::vector<int32_t> labels_;  // GPT: targets [micro,T]; ViT: classes [micro]
    std::function<void()> forward_;
    std::vector<double> seconds_;
};

nlohmann::json figures(const StepTimer& t) {
    const double step = t.median_step();
    return {{"median_step_seconds", step},
            {"steps_timed", t.timed()},
            {"tokens_per_second", t.tokens_per_step() / step},
            {"training_flops_per_token", t.flops_per_step() / t.tokens_per_step()},
            {"achieved_gflops", t.flops_per_step() / step / 1e9},
            {"parameters", t.model().num_parameters()}};
}

void print_figures(const std::string& label, const StepTimer& t) {
    const double step = t.median_step();
    fmt::print(
        "{}: {} parameters, median step of {} {:.2f} ms, {:.0f} tokens/s, "
        "{:.4g} FLOPs/token, {:.1f} GFLOP/s\n",
        label, t.model().num_parameters(), t.timed(), step * 1e3, t.tokens_per_step() / step,
        t.flops_per_step() / t.tokens_per_step(), t.flops_per_step() / step / 1e9);
}

int run_bench(const BenchArgs& args) {
    const ModelPreset& preset = find_model_preset(args.model);
    const ModelConfig dense_config = preset.model;
    ModelConfig moe_config = dense_config;
    const bool moe = args.experts > 0;
    if (moe) {
        moe_config.moe.experts = args.experts;
        moe_config.moe.k = args.k;
        moe_config.moe.router = parse_choice<RouterKind>(args.router, "", "--router");
        moe_config.moe.capacity_factor = args.capacity_factor;
        moe_config.moe.eval_capacity_factor = args.capacity_factor;
        RunConfig check;
        check.model = moe_config;
        if (moe_config.arch == Arch::Vit) check.data.source = DataSource::FashionMnist;
        validate(check, "--experts");
    }
    const int B = args.batch > 0 ? args.batch : preset.batch_size;
    const int micro = args.micro_batch > 0 ? args.micro_batch : B;
    if (micro > B || B % micro != 0) {
        throw UserError("", "--micro-batch",
                        fmt::format("expected a divisor of the batch ({}), found {}", B, micro));
    }
    const Precision precision = parse_choice<Precision>(args.precision, "", "--precision");
    const int T = tokens_per_example(dense_config);
    const double dense_flops = flops_per_token(dense_config).training * B * T;
    const int steps = args.steps > 0 ? args.steps : (dense_flops > 1e12 ? 3 : 20);
    auto backend = make_backend(args.device);
    backend->set_precision(precision);

    StepTimer dense(*backend, dense_config, B, micro);
    std::unique_ptr<StepTimer> sparse;
    if (moe) sparse = std::make_unique<StepTimer>(*backend, moe_config, B, micro);
    dense.run(args.warmup, false);
    if (sparse) sparse->run(args.warmup, false);
    // interleave in rounds so both models see the same machine conditions
    const int rounds = std::min(steps, 4);
    for (int r = 0; r < rounds; ++r) {
        const int n = steps / rounds + (r < steps % rounds ? 1 : 0);
        dense.run(n, true);
        if (sparse) sparse->run(n, true);
    }
    const StepTimer& main = sparse ? *sparse : dense;
    const double main_gflops = main.flops_per_step() / main.median_step() / 1e9;
    const double dense_gflops = dense.flops_per_step() / dense.median_step() / 1e9;
    // The yardstick: on the CPU, OpenBLAS sgemm at the MLP up-projection [B·T, C]·[4C, C]ᵀ
    // measured now; on a GPU, the vendor's dense peak for the precision (MFU).
    const bool on_cpu = backend->kind() == DeviceKind::CPU;
    const int M = B * T, N = 4 * dense_config.channels, K = dense_config.channels;
    const double sgemm_gflops = on_cpu ? measure_sgemm_gflops(M, N, K, 1.0) : 0.0;
    const bool measured_peak = args.peak_tflops > 0;
    const double peak_gflops =
        measured_peak ? args.peak_tflops * 1e3 : backend->peak_flops(precision) / 1e9;

    if (args.json) {
        nlohmann::json out{{"model", preset.name},           {"batch", B},
                           {"micro_batch", micro},           {"context", T},
                           {"precision", args.precision},    {"threads", omp_get_max_threads()},
                           {"backend", backend->describe()}, {"dense", figures(dense)}};
        if (on_cpu) {
            out["sgemm_shape"] = {M, N, K};
            out["sgemm_gflops"] = sgemm_gflops;
            out["fraction_of_sgemm"] = main_gflops / sgemm_gflops;
        } else if (peak_gflops > 0) {
            out["peak_gflops"] = peak_gflops;
            out["peak_source"] = measured_peak ? "--peak-tflops" : "device table";
            out["dense"]["mfu"] = dense_gflops / peak_gflops;
            if (sparse) out["moe_mfu"] = main_gflops / peak_gflops;
        }
        if (sparse) {
            out["moe"] = figures(*sparse);
            out["moe"]["experts"] = moe_config.moe.experts;
            out["moe"]["router"] = moe_config.moe.router;
            out["moe"]["k"] = moe_config.moe.k;
            out["moe"]["capacity_factor"] = moe_config.moe.capacity_factor;
            out["moe_over_dense_gflops"] = main_gflops / dense_gflops;
        }
        fmt::print("{}\n", out.dump(2));
        return 0;
    }
    fmt::print(
        "model {} ({}), batch {}{} ({} tokens per step), {} GEMMs, training steps "
        "(forward + backward + AdamW) on random {}\n",
        preset.name, describe_model(dense_config), B,
        micro < B ? fmt::format(" in {} micro-batches of {}", B / micro, micro) : "", B * T,
        args.precision, dense_config.arch == Arch::Vit ? "images" : "tokens");
    fmt::print("backend {}\n", backend->describe());
    print_figures("dense", dense);
    if (sparse) {
        fmt::print(
            "MoE {} experts, {}{}, capacity factor {}, blocks {} (FLOPs count active "
            "experts and the router)\n",
            moe_config.moe.experts, to_string(moe_config.moe.router),
            moe_config.moe.router == RouterKind::TopK ? fmt::format(" k={}", moe_config.moe.k) : "",
            moe_config.moe.capacity_factor, moe_config.moe.layers);
        print_figures("moe  ", *sparse);
        fmt::print("MoE / dense achieved GFLOP/s: {:.1f}%\n", 100.0 * main_gflops / dense_gflops);
    }
    if (on_cpu) {
        fmt::print("sgemm {}x{}x{}: {:.1f} GFLOP/s (same process)\n", M, N, K, sgemm_gflops);
        fmt::print("{} fraction of sgemm: {:.1f}%\n", sparse ? "MoE" : "dense",
                   100.0 * main_gflops / sgemm_gflops);
    } else if (peak_gflops > 0) {
        fmt::print(
            "MFU = training FLOPs per step / median step time / peak, with training "
            "FLOPs = 3 × forward (2 × active parameters + attention) per token; peak "
            "{:.1f} TFLOP/s ({})\n",
            peak_gflops / 1e3,
            measured_peak ? "given by --peak-tflops" : args.precision + " dense, device table");
        fmt::print("dense MFU: {:.1f}%\n", 100.0 * dense_gflops / peak_gflops);
        if (sparse)
            fmt::print("MoE MFU (active FLOPs): {:.1f}%\n", 100.0 * main_gflops / peak_gflops);
    } else {
        fmt::print("no peak figure is known for this device: MFU not printed\n");
    }
    return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
    auto args = std::make_shared<BenchArgs>();
    auto plan = std::make_shared<BenchPlanArgs>();
    auto planning = std::make_shared<bool>(false);
    auto* sub = app.add_subcommand("bench", "Time training steps of a preset model");
    sub->add_flag("--plan", *planning,
                  "print the communication plan of a multi-rank job instead of timing: bytes "
                  "per step per rank (DP all-reduce, EP all-to-all) and their time at --link-gbps "
                  "against the step's compute at --tflops, for the dense model and its MoE form");
    sub->add_option("--ranks", plan->ranks, "--plan: ranks N");
    sub->add_option("--ep", plan->expert_parallel,
                    "--plan: expert-parallel size M (divides N and E)");
    sub->add_option("--link-gbps", plan->link_gbytes_per_second,
                    "--plan: link rate per rank, each way, in GB/s (default 50)");
    sub->add_option("--tflops", plan->tflops,
                    "--plan: achieved TFLOP/s per rank (default 400: an assumption)");
    sub->add_option("--model", args->model, "gpt-tiny | gpt-small | gpt-124m | vit-tiny");
    sub->add_option("--steps", args->steps, "timed steps (default 20, 3 for large models)");
    sub->add_option("--warmup", args->warmup, "untimed steps first");
    sub->add_option("--batch", args->batch, "batch size (default: the preset's)");
    sub->add_option("--micro-batch", args->micro_batch,
                    "examples per forward/backward pass; the step accumulates batch/micro-batch "
                    "passes (default: the whole batch)");
    sub->add_option("--precision", args->precision, "GEMM precision: fp32 | bf16");
    sub->add_flag("--json", args->json, "print JSON");
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_option("--experts", args->experts,
                    "also time the preset with every other block's MLP an MoE layer of E experts");
    sub->add_option("--k", args->k, "experts per token (topk)");
    sub->add_option("--capacity-factor", args->capacity_factor,
                    "expert capacity factor (≤ 0: no limit)");
    sub->add_option("--router", args->router, "topk | expert_choice");
    sub->add_option("--peak-tflops", args->peak_tflops,
                    "GPU: the peak MFU is set against, e.g. a measured bf16 matmul peak "
                    "(default: the device's table)");
    return [args, plan, planning, sub] {
        if (!*planning) return run_bench(*args);
        // the options both modes share
        if (sub->count("--model") > 0) plan->model = args->model;
        plan->batch = args->batch;
        plan->micro_batch = args->micro_batch;
        if (args->experts > 0) plan->experts = args->experts;
        plan->k = args->k;
        plan->capacity_factor = args->capacity_factor;
        plan->router = args->router;
        plan->json = args->json;
        return print_communication_plan(*plan);
    };
}

}  // namespace upcycle::cli
