// upcycle train CONFIG.yaml [--set key=value ...] [--out DIR] [--device cpu] [--restart]
// A data-parallel job runs the same command on every rank (`mpirun -np N upcycle train …`,
// `srun -n N upcycle train …`): the launcher's environment makes the communicator, and only
// rank 0 prints.
#include <atomic>
#include <csignal>
#include <cstdio>

#include <fmt/format.h>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/train.h"
#include "kernels/backend_factory.h"
#include "kernels/comm_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

std::atomic<bool> g_stop{false};
extern "C" void request_stop(int) { g_stop.store(true); }

struct TrainArgs {
    std::string config;
    std::vector<std::string> overrides;
    std::string out;
    std::string device = "cpu";
    bool restart = false;
    std::string from;
};

int run_train(const TrainArgs& args) {
    RunConfig config;
    if (!args.config.empty()) {
        config = load_run_config(args.config, args.overrides);
    } else if (!args.from.empty()) {
        // the checkpoint's own config (JSON is YAML), with the --set overrides
        const Checkpoint source = read_checkpoint(args.from);
        config = parse_run_config(to_json(source.config).dump(), args.from, args.overrides);
    } else {
        throw UserError("", "config", "give a CONFIG.yaml, or --from CHECKPOINT to continue one");
    }
    auto backend = make_backend(args.device);
    // the launcher's ranks, over the transport of this backend (UserError naming --device when
    // this build has none for it)
    const auto communicator = make_communicator(*backend, launch_environment());
    const bool lead = communicator->rank() == 0;
    const std::string out = args.out.empty() ? "results/train/" + config.name : args.out;
    const auto flops = flops_per_token(config.model);
    const std::string ranks =
        communicator->size() == 1
            ? ""
            : fmt::format(" | {} ranks ({}, ZeRO stage {})", communicator->size(),
                          communicator->name(), config.train.zero_stage);
    if (lead) {
        fmt::print(stderr, "upcycle train: {} | {} | {} parameters | {} per training token\n",
                   config.name, describe_model(config.model),
                   format_count(static_cast<double>(parameter_count(config.model))),
                   upcycle::format_flops(flops.training));
        fmt::print(
            stderr, "  data {} | {} steps × batch {} | schedule {} lr {:g} | {}{} | out {}\n",
            to_string(config.data.source), config.train.steps, config.train.batch_size,
            to_string(config.train.schedule), config.train.lr, backend->describe(), ranks, out);
    }

    std::signal(SIGINT, request_stop);
    std::signal(SIGTERM, request_stop);
    std::signal(SIGUSR1, request_stop);  // what mpirun passes on to its ranks
    TrainObserver observer;              // train() reports to it on rank 0 only
    observer.on_message = [](const std::string& text) { fmt::print(stderr, "  {}\n", text); };
    observer.on_step = [](const StepRecord& r) {
        const double remaining_steps = static_cast<double>(r.total_steps - r.step);
        const double seconds_per_step = r.step > 0 ? r.seconds / static_cast<double>(r.step) : 0;
        fmt::print(stderr,
                   "step {:>6}/{} | loss {:.4f} | lr {:.2e} | grad {:.3f} | {} tok/s | "
                   "{:.1f} GFLOP/s | eta {}\n",
                   r.step, r.total_steps, r.loss, r.lr, r.grad_norm,
                   format_count(r.tokens_per_second),
                   r.seconds > 0 ? r.flops / r.seconds / 1e9 : 0.0,
                   format_duration(remaining_steps * seconds_per_step));
    };
    observer.on_eval = [](const EvalRecord& r) {
        fmt::print(stderr, "eval {:>6} | val_loss {:.4f} | val_accuracy {:.4f}{}\n", r.step,
                   r.result.loss, r.result.accuracy, format_extra_metrics(r.result));
    };
    observer.on_checkpoint = [](const std::filesystem::path& path, int64_t step) {
        fmt::print(stderr, "checkpoint {:>6} | {}\n", step, path.string());
    };
    TrainOptions options;
    options.out_dir = out;
    options.resume = !args.restart;
    options.stop_requested = &g_stop;
    options.init_from = args.from;
    options.communicator = communicator.get();
    TrainSummary summary;
    try {
        summary = train(*backend, config, options, observer);
    } catch (const std::exception& e) {
        if (communicator->size() == 1) throw;     // main reports it
        end_job_after_failure(*communicator, e);  // the others may wait for it in a collective
    }
    if (!lead) return summary.completed ? 0 : 130;
    if (!summary.completed) {
        fmt::print(stderr, "stopped at step {}; run the same command again to resume\n",
                   summary.steps);
        return 130;
    }
    const auto& e = *summary.final_eval;
    fmt::print(
        "final validation loss {:.4f} | accuracy {:.4f}{} | {} steps | {} | {:.1f}s | "
        "checkpoint {}\n",
        e.loss, e.accuracy, format_extra_metrics(e), summary.steps,
        upcycle::format_flops(summary.state.flops), summary.state.seconds,
        summary.checkpoint.string());
    return 0;
}

}  // namespace

Command add_train_command(CLI::App& app) {
    auto args = std::make_shared<TrainArgs>();
    auto* sub = app.add_subcommand("train", "Train one model from a YAML config");
    sub->add_option("config", args->config, "run config (YAML); optional with --from")
        ->check(CLI::ExistingFile);
    sub->add_option("--from", args->from,
                    "continue from this checkpoint (e.g. made by `upcycle surgery`): its weights, "
                    "optimizer state and step counter; without CONFIG its own config is used");
    sub->add_option("--set", args->overrides, "override a config key: key.path=value (repeatable)");
    sub->add_option("--out", args->out, "output directory (default results/train/NAME)");
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_flag("--restart", args->restart,
                  "ignore an existing checkpoint in the output directory");
    return [args] { return run_train(*args); };
}

}  // namespace upcycle::cli
