#include "core/train.h"

#include <chrono>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/flops.h"
#include "core/optim/adamw.h"
#include "core/optim/schedule.h"
#include "core/task/task.h"
#include "core/train_log.h"

namespace upcycle {

namespace {

using Clock = std::chrono::steady_clock;

// The data sampler's stream is derived from the seed but distinct from the init stream.
constexpr uint64_t kDataStreamSalt = 0x5DA7A5EEDULL;

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

}  // namespace

std::filesystem::path checkpoint_path(const std::filesystem::path& out_dir) {
    return out_dir / "checkpoint.safetensors";
}

TrainSummary train(Backend& backend, const RunConfig& config, const TrainOptions& options,
                   const TrainObserver& observer) {
    auto message = [&](const std::string& text) {
        if (observer.on_message) observer.on_message(text);
    };
    const ModelConfig& mc = config.model;
    const TrainConfig& tc = config.train;
    backend.set_precision(parse_precision(tc.precision, config.name, "train.precision"));
    const auto task = make_training_task(backend, config, config.name);
    const int parts = micro_batches(tc);
    Model& model = task->model();
    AdamW optimizer(backend, model.num_parameters());
    TrainingState state;
    Rng data_rng(tc.seed ^ kDataStreamSalt);
    TrainSummary summary;

    std::filesystem::create_directories(options.out_dir);
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
        summary.resumed = true;
        summary.resumed_from_step = state.step;
        message("resuming from " + ckpt_path.string() + " at step " + std::to_string(state.step));
    } else if (!options.init_from.empty()) {
        const Checkpoint ckpt = read_checkpoint(options.init_from);
        const auto diff = first_difference(to_json(ckpt.config)["model"], to_json(config)["model"]);
        if (!diff.empty()) {
            throw UserError(options.init_from.string(), "model." + diff,
                            "the checkpoint's model differs from the run's config");
        }
        load_into(ckpt, model, &optimizer);
        state = ckpt.state;
        data_rng.set_state(state.data_rng);
        summary.initialized_from_checkpoint = true;
        message("starting from " + options.init_from.string() + " at step " +
                std::to_string(state.step) +
                (ckpt.has_optimizer ? " with its optimizer state" : " with a fresh optimizer"));
    } else {
        model.init_weights(tc.seed);
    }
    TrainLog log = summary.resumed ? TrainLog::resume(log_path(options.out_dir), state.step)
                                   : TrainLog::start(log_path(options.out_dir));

    const int64_t tokens_per_step = int64_t{tc.batch_size} * tokens_per_example(mc);
    const double flops_per_step =
        flops_per_token(mc).training * static_cast<double>(tokens_per_step);
    auto last_checkpoint_time = Clock::now();
    auto interval_start = Clock::now();
    int64_t interval_tokens = 0;

    auto save = [&]() {
        state.data_rng = data_rng.state();
        save_checkpoint(ckpt_path, config, model, &optimizer, state);
        last_checkpoint_time = Clock::now();
        summary.checkpoint = ckpt_path;
        if (observer.on_checkpoint) observer.on_checkpoint(ckpt_path, state.step);
    };
    auto run_eval = [&](EvalScope scope) {
        EvalRecord record;
        record.step = state.step;
        record.flops = state.flops;
        record.seconds = state.seconds;
        record.result = task->evaluate(scope);
        log.write_eval(record);
        if (observer.on_eval) observer.on_eval(record);
        return record.result;
    };

    // milestones already behind a resumed (or initial) state are not redone
    auto reached = [&](const Milestone& m) {
        return (m.step >= 0 && state.step >= m.step) ||
               (m.seconds >= 0 && state.seconds - options.seconds_origin >= m.seconds);
    };
    std::size_t next_milestone = 0;
    while (next_milestone < options.milestones.size() && reached(options.milestones[next_milestone])) {
        ++next_milestone;
    }
    bool all_milestones_done =
        options.stop_at_last_milestone && !options.milestones.empty() &&
        next_milestone == options.milestones.size();

    while (state.step < tc.steps && !all_milestones_done) {
        if (options.stop_requested && options.stop_requested->load()) {
            message("stop requested: checkpointing at step " + std::to_string(state.step));
            save();
            summary.state = state;
            summary.steps = state.step;
            return summary;
        }
        const auto step_start = Clock::now();
        // gradient accumulation: the micro-batches' mean gradients are summed, and the
        // optimizer takes their mean (gradient_scale 1/parts)
        ForwardStats stats;
        for (int part = 0; part < parts; ++part) {
            const ForwardStats micro = task->train_forward(state.step, part, data_rng);
            model.backward(part == 0 ? Gradients::Overwrite : Gradients::Accumulate);
            stats.loss_sum += micro.loss_sum;
            stats.tokens += micro.tokens;
            stats.aux_loss += micro.aux_loss / parts;
        }
        const int64_t step = state.step + 1;
        const double lr = learning_rate(tc, step);
        const auto opt = optimizer.update(model.layout(), model.parameters(), model.gradients(), tc,
                                          lr, 1.0 / parts);
        const double step_seconds = std::chrono::duration<double>(Clock::now() - step_start).count();

        state.step = step;
        state.tokens += tokens_per_step;
        state.flops += flops_per_step;
        state.seconds += step_seconds;
        interval_tokens += tokens_per_step;

        if (step % tc.log_every == 0 || step == tc.steps) {
            StepRecord record;
            record.step = step;
            record.total_steps = tc.steps;
            record.loss = stats.mean_loss();
            record.lr = lr;
            record.grad_norm = opt.grad_norm;
            record.tokens = state.tokens;
            record.flops = state.flops;
            record.seconds = state.seconds;
            const double interval = std::chrono::duration<double>(Clock::now() - interval_start).count();
            record.tokens_per_second = interval > 0 ? static_cast<double>(interval_tokens) / interval : 0;
            record.aux_loss = stats.aux_loss;
            record.moe_layers = model.moe_layers();
            record.routing = model.routing_stats();  // of the step's last micro-batch
            interval_start = Clock::now();
            interval_tokens = 0;
            log.write_step(record);
            if (observer.on_step) observer.on_step(record);
        }
        bool milestone_now = false;
        std::optional<EvalResult> milestone_eval;
        while (next_milestone < options.milestones.size() && reached(options.milestones[next_milestone])) {
            if (!milestone_eval) milestone_eval = run_eval(EvalScope::Full);
            EvalRecord record;
            record.step = state.step;
            record.flops = state.flops;
            record.seconds = state.seconds;
            record.result = *milestone_eval;
            if (observer.on_milestone) observer.on_milestone(options.milestones[next_milestone], record);
            ++next_milestone;
            milestone_now = true;
        }
        all_milestones_done = options.stop_at_last_milestone && !options.milestones.empty() &&
                              next_milestone == options.milestones.size();
        const bool last = step == tc.steps || all_milestones_done;
        if (milestone_eval) {
            if (last) summary.final_eval = milestone_eval;
            interval_start = Clock::now();
            interval_tokens = 0;
        } else if (last || (config.eval.every > 0 && step % config.eval.every == 0)) {
            const auto result = run_eval(last ? EvalScope::Full : EvalScope::Validation);
            if (last) summary.final_eval = result;
            interval_start = Clock::now();  // evaluation time is not training throughput
            interval_tokens = 0;
        }
        const double since_checkpoint =
            std::chrono::duration<double>(Clock::now() - last_checkpoint_time).count();
        if (last || milestone_now ||
            (config.checkpoint.every > 0 && step % config.checkpoint.every == 0) ||
            (config.checkpoint.every_seconds > 0 && since_checkpoint >= config.checkpoint.every_seconds)) {
            save();
            interval_start = Clock::now();
            interval_tokens = 0;
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
