#include "core/train.h"

#include <chrono>
#include <cmath>
#include <functional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/flops.h"
#include "core/optim/adamw.h"
#include "core/optim/schedule.h"
#include "core/task/task.h"
#include "core/throughput_meter.h"
#include "core/train_log.h"
#include "core/train_policy.h"

namespace upcycle {

namespace {

using Clock = std::chrono::steady_clock;

std::string first_difference(const nlohmann::json& a, const nlohmann::json& b,
                             const std::string& prefix = "") {
    if (a.is_object() && b.is_object()) {
        for (const auto& [key, value] : a.items()) {
            const std::string path = prefix.empty() ? key : prefix + "." + key;
            if (!b.contains(key)) return path;
            const auto diff = first_difference(value, b[key], path);
            if (!diff.empty()) return diff;
        }
        for (const auto& [key, value] : b.items()) {
            if (!a.contains(key)) return prefix.empty() ? key : prefix + "." + key;
        }
        return "";
    }
    return a == b ? "" : prefix;
}

// How a run began.
enum class RunStart {
    Fresh,           // weights initialised from the seed
    Resumed,         // from the checkpoint in the output directory
    FromCheckpoint,  // from TrainOptions::init_from
};

// Loads the weights, optimizer moments, training state and data stream of the checkpoint in
// out_dir (a resume), else of options.init_from, else initialises the weights from the seed.
// A checkpoint trained with another config (init_from: another model) is refused, naming the
// first key that differs.
RunStart restore_or_init(const RunConfig& config, const TrainOptions& options, Model& model,
                         AdamW& optimizer, TrainingState& state, Rng& data_rng,
                         const std::function<void(const std::string&)>& message) {
    const auto ckpt_path = checkpoint_path(options.out_dir);
    if (options.resume && std::filesystem::exists(ckpt_path)) {
        const Checkpoint ckpt = read_checkpoint(ckpt_path);
        const auto diff = first_difference(to_json(ckpt.config), to_json(config));
        if (!diff.empty()) {
            throw UserError(ckpt_path.string(), diff,
                            "the checkpoint in the output directory was trained with a different "
                            "value; use another --out directory (or --restart to overwrite it)");
        }
        load_into(ckpt, model, &optimizer);
        state = ckpt.state;
        data_rng.set_state(state.data_rng);
        message("resuming from " + ckpt_path.string() + " at step " + std::to_string(state.step));
        return RunStart::Resumed;
    }
    if (!options.init_from.empty()) {
        const Checkpoint ckpt = read_checkpoint(options.init_from);
        const auto diff = first_difference(to_json(ckpt.config)["model"], to_json(config)["model"]);
        if (!diff.empty()) {
            throw UserError(options.init_from.string(), "model." + diff,
                            "the checkpoint's model differs from the run's config");
        }
        load_into(ckpt, model, &optimizer);
        state = ckpt.state;
        data_rng.set_state(state.data_rng);
        message("starting from " + options.init_from.string() + " at step " +
                std::to_string(state.step) +
                (ckpt.has_optimizer ? " with its optimizer state" : " with a fresh optimizer"));
        return RunStart::FromCheckpoint;
    }
    model.init_weights(config.train.seed);
    return RunStart::Fresh;
}

// One step's forward and backward passes, micro-batch by micro-batch (gradient
// accumulation): their mean gradients are summed in model.gradients(), and the optimizer
// takes their mean (gradient_scale 1/parts).
ForwardStats forward_backward(TrainingTask& task, int64_t step, int parts, Rng& data_rng) {
    ForwardStats stats;
    for (int part = 0; part < parts; ++part) {
        const ForwardStats micro = task.train_forward(step, part, data_rng);
        task.model().backward(part == 0 ? Gradients::Overwrite : Gradients::Accumulate);
        stats.loss_sum += micro.loss_sum;
        stats.tokens += micro.tokens;
        stats.aux_loss += micro.aux_loss / parts;
    }
    return stats;
}

// What the log and on_step get for the step that brought the run to `state`.
StepRecord step_record(const TrainingState& state, int64_t total_steps, const ForwardStats& stats,
                       double lr, const OptimizerStepStats& opt, double tokens_per_second,
                       const Model& model) {
    StepRecord record;
    record.step = state.step;
    record.total_steps = total_steps;
    record.loss = stats.mean_loss();
    record.lr = lr;
    record.grad_norm = opt.grad_norm;
    record.tokens = state.tokens;
    record.flops = state.flops;
    record.seconds = state.seconds;
    record.tokens_per_second = tokens_per_second;
    record.aux_loss = stats.aux_loss;
    record.moe_layers = model.moe_layers();
    record.routing = model.routing_stats();  // of the step's last micro-batch
    return record;
}

// A step whose loss or gradient norm is not finite has diverged: every later step would train
// on NaN, and every continuation made from its checkpoint would inherit them. Checked before
// anything of the step is logged or checkpointed, so the run's last checkpoint stays finite.
void check_finite(const RunConfig& config, int64_t step, const ForwardStats& stats,
                  const OptimizerStepStats& opt, const std::filesystem::path& last_checkpoint) {
    const double loss = stats.mean_loss();
    if (std::isfinite(loss) && std::isfinite(opt.grad_norm)) return;
    const std::string kept =
        std::filesystem::exists(last_checkpoint)
            ? "; " + last_checkpoint.string() + " keeps the last checkpoint before it"
            : "";
    throw TrainingDiverged(
        config.name, step,
        fmt::format("training diverged at step {}: the loss is {:.6g} and the gradient norm {:.6g} "
                    "(train.lr is {:g}, train.grad_clip {:g}){}",
                    step, loss, opt.grad_norm, config.train.lr, config.train.grad_clip, kept));
}

}  // namespace

Rng data_stream(uint64_t seed) {
    // derived from the seed but distinct from the init stream
    constexpr uint64_t kDataStreamSalt = 0x5DA7A5EEDULL;
    return Rng(seed ^ kDataStreamSalt);
}

std::filesystem::path checkpoint_path(const std::filesystem::path& out_dir) {
    return out_dir / "checkpoint.safetensors";
}

TrainSummary train(Backend& backend, const RunConfig& config, const TrainOptions& options,
                   const TrainObserver& observer) {
    const std::function<void(const std::string&)> message = [&](const std::string& text) {
        if (observer.on_message) observer.on_message(text);
    };
    UPCYCLE_ASSERT(options.communicator != nullptr, "a training run needs a communicator");
    Communicator& communicator = *options.communicator;
    const TrainConfig& tc = config.train;
    backend.set_precision(tc.precision);
    const auto task = make_training_task(backend, config, config.name, communicator);
    const int parts = micro_batches(tc);
    Model& model = task->model();
    AdamW optimizer(backend, model.num_parameters());
    TrainingState state;
    Rng data_rng = data_stream(tc.seed);
    TrainSummary summary;

    std::filesystem::create_directories(options.out_dir);
    const auto ckpt_path = checkpoint_path(options.out_dir);
    if (const auto removed = remove_abandoned_temporaries(options.out_dir); removed.files > 0) {
        message(fmt::format("removed {} temporary file(s) of {:.1f} MB left by killed runs",
                            removed.files, static_cast<double>(removed.bytes) / 1e6));
    }
    const RunStart start =
        restore_or_init(config, options, model, optimizer, state, data_rng, message);
    summary.resumed = start == RunStart::Resumed;
    summary.resumed_from_step = summary.resumed ? state.step : 0;
    summary.initialized_from_checkpoint = start == RunStart::FromCheckpoint;
    TrainLog log = summary.resumed ? TrainLog::resume(log_path(options.out_dir), state.step)
                                   : TrainLog::start(log_path(options.out_dir));

    const int64_t tokens_per_step = int64_t{tc.batch_size} * tokens_per_example(config.model);
    const double flops_per_step =
        flops_per_token(config.model).training * static_cast<double>(tokens_per_step);
    TrainPolicy policy(config, options, state);
    ThroughputMeter throughput;

    auto save = [&]() {
        state.data_rng = data_rng.state();
        log.flush();  // the log covers every checkpoint: a store that lost rows takes them back
        save_checkpoint(ckpt_path, config, model, &optimizer, state);
        policy.checkpointed();
        summary.checkpoint = ckpt_path;
        if (observer.on_checkpoint) observer.on_checkpoint(ckpt_path, state.step);
    };
    auto evaluate = [&](EvalScope scope, const std::vector<Milestone>& milestones) {
        EvalRecord record{state.step, state.flops, state.seconds, task->evaluate(scope)};
        log.write_eval(record, milestones);
        if (observer.on_eval) observer.on_eval(record);
        return record;
    };

    while (policy.wants_step(state)) {
        if (options.stop_requested && options.stop_requested->load()) {
            message("stop requested: checkpointing at step " + std::to_string(state.step));
            save();
            summary.state = state;
            summary.steps = state.step;
            return summary;
        }
        const auto step_start = Clock::now();
        const ForwardStats stats = forward_backward(*task, state.step, parts, data_rng);
        communicator.all_reduce_gradients(model.gradients());  // the optimizer steps on the mean
        const double lr = learning_rate(tc, state.step + 1);
        const auto opt = optimizer.update(model.layout(), model.parameters(), model.gradients(), tc,
                                          lr, 1.0 / parts);
        check_finite(config, state.step + 1, stats, opt, ckpt_path);
        state.step += 1;
        state.tokens += tokens_per_step;
        state.flops += flops_per_step;
        state.seconds += std::chrono::duration<double>(Clock::now() - step_start).count();
        throughput.add(tokens_per_step);

        if (logs_step(tc, state.step)) {
            const StepRecord record =
                step_record(state, tc.steps, stats, lr, opt, throughput.tokens_per_second(), model);
            throughput.reset();
            log.write_step(record);
            if (observer.on_step) observer.on_step(record);
        }
        const StepPlan plan = policy.after_step(state);
        if (plan.eval) {
            const EvalRecord record = evaluate(*plan.eval, plan.milestones);
            for (const Milestone& milestone : plan.milestones) {
                if (observer.on_milestone) observer.on_milestone(milestone, record);
            }
            if (plan.last) summary.final_eval = record.result;
            throughput.reset();  // evaluation time is not training throughput
        }
        if (policy.checkpoint_due(state, plan)) {
            save();
            throughput.reset();
        }
    }
    if (!summary.final_eval) {
        // resumed after the last step had already been taken
        summary.final_eval = task->evaluate(EvalScope::Full);
        summary.checkpoint = ckpt_path;
    }
    summary.completed = true;
    summary.steps = state.step;
    summary.state = state;
    return summary;
}

}  // namespace upcycle
