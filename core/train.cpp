#include "core/train.h"

#include <chrono>
#include <cmath>
#include <functional>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/data_parallel.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/optim/data_parallel_adamw.h"
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

// Every rank must start from the same point: a checkpoint that only some ranks see (an output
// directory on a filesystem the ranks do not share) would train them from different weights.
void require_same_start(Communicator& ranks, RunStart start, const TrainingState& state,
                        const std::filesystem::path& ckpt_path) {
    if (ranks.size() == 1) return;
    const int64_t mine[2] = {static_cast<int64_t>(start), state.step};
    std::vector<int64_t> all(2 * static_cast<std::size_t>(ranks.size()));
    ranks.all_gather_host(mine, all.data(), 2);
    for (int r = 1; r < ranks.size(); ++r) {
        const auto at = 2 * static_cast<std::size_t>(r);
        if (all[at] != all[0] || all[at + 1] != all[1]) {
            throw UserError(ckpt_path.string(), "--out",
                            fmt::format("rank {} starts at step {} and rank 0 at step {} (their "
                                        "checkpoints differ): every rank must see the output "
                                        "directory (a filesystem they share)",
                                        r, all[at + 1], all[1]));
        }
    }
}

// The step's statistics summed over the ranks (the aux loss and the wall seconds averaged):
// what every rank logs, checks and counts is the same.
void reduce_step_stats(Communicator& ranks, ForwardStats& stats, double& seconds) {
    if (ranks.size() == 1) return;
    double values[4] = {stats.loss_sum, static_cast<double>(stats.tokens), stats.aux_loss, seconds};
    ranks.all_reduce_host(values, 4, ReduceOp::Sum);
    stats.loss_sum = values[0];
    stats.tokens = static_cast<int64_t>(values[1]);
    stats.aux_loss = values[2] / ranks.size();
    seconds = values[3] / ranks.size();
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
    record.routing = model.routing_stats();  // of rank 0's last micro-batch of the step
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
    UPCYCLE_ASSERT(options.communicator != nullptr, "a training run needs a communicator");
    Communicator& communicator = *options.communicator;
    // rank 0 writes the log and the checkpoints and reports to the observer; every rank trains
    const bool writer = communicator.rank() == 0;
    const TrainObserver report = writer ? observer : TrainObserver{};
    const std::function<void(const std::string&)> message = [&](const std::string& text) {
        if (report.on_message) report.on_message(text);
    };
    const TrainConfig& tc = config.train;
    backend.set_precision(tc.precision);
    const BatchSplit split = split_batch(tc, communicator.size(), config.name);
    const auto task =
        make_training_task(backend, rank_task_config(config, split), config.name, communicator);
    Model& model = task->model();
    DataParallelAdamW optimizer(backend, communicator, model.num_parameters(), tc.zero_stage);
    TrainingState state;
    Rng data_rng = data_stream(tc.seed);
    TrainSummary summary;

    const auto ckpt_path = checkpoint_path(options.out_dir);
    if (writer) {
        std::filesystem::create_directories(options.out_dir);
        if (const auto removed = remove_abandoned_temporaries(options.out_dir); removed.files > 0) {
            message(fmt::format("removed {} temporary file(s) of {:.1f} MB left by killed runs",
                                removed.files, static_cast<double>(removed.bytes) / 1e6));
        }
    }
    const RunStart start =
        restore_or_init(config, options, model, optimizer.adamw(), state, data_rng, message);
    require_same_start(communicator, start, state, ckpt_path);
    summary.resumed = start == RunStart::Resumed;
    summary.resumed_from_step = summary.resumed ? state.step : 0;
    summary.initialized_from_checkpoint = start == RunStart::FromCheckpoint;
    std::optional<TrainLog> log;
    if (writer) {
        log.emplace(summary.resumed ? TrainLog::resume(log_path(options.out_dir), state.step)
                                    : TrainLog::start(log_path(options.out_dir)));
    }

    const int64_t tokens_per_step = int64_t{tc.batch_size} * tokens_per_example(config.model);
    const double flops_per_step =
        flops_per_token(config.model).training * static_cast<double>(tokens_per_step);
    TrainPolicy policy(config, options, state);
    ThroughputMeter throughput;

    auto save = [&]() {
        state.data_rng = data_rng.state();
        if (log)
            log->flush();  // the log covers every checkpoint: a store that lost rows takes them back
        optimizer.save_checkpoint(ckpt_path, config, model, state);  // rank 0 writes, all wait
        policy.checkpointed();
        summary.checkpoint = ckpt_path;
        if (report.on_checkpoint) report.on_checkpoint(ckpt_path, state.step);
    };
    auto evaluate = [&](EvalScope scope, const std::vector<Milestone>& milestones) {
        EvalRecord record{state.step, state.flops, state.seconds,
                          task->evaluate(scope, communicator)};
        if (log) log->write_eval(record, milestones);
        if (report.on_eval) report.on_eval(record);
        return record;
    };

    while (policy.wants_step(state)) {
        // a signal reaches one rank (or some): all of them checkpoint and stop
        if (any_rank(communicator, options.stop_requested && options.stop_requested->load())) {
            message("stop requested: checkpointing at step " + std::to_string(state.step));
            save();
            summary.state = state;
            summary.steps = state.step;
            return summary;
        }
        const auto step_start = Clock::now();
        // the aux loss is read from the device for the steps that log it, not on every forward
        model.report_auxiliary_loss(logs_step(tc, state.step + 1));
        ForwardStats stats =
            forward_backward_slice(*task, state.step, split, communicator.rank(), data_rng);
        const double lr = learning_rate(tc, state.step + 1);
        // averaged over the ranks, then the update: the same parameters on every rank
        const auto opt = optimizer.step(model, tc, lr, 1.0 / split.parts_per_rank);
        double seconds = std::chrono::duration<double>(Clock::now() - step_start).count();
        reduce_step_stats(communicator, stats, seconds);
        // the loss and the gradient norm are the same on every rank: all throw, or none
        check_finite(config, state.step + 1, stats, opt, ckpt_path);
        state.step += 1;
        state.tokens += tokens_per_step;
        state.flops += flops_per_step;
        state.seconds += seconds;
        throughput.add(tokens_per_step);

        if (logs_step(tc, state.step)) {
            const StepRecord record =
                step_record(state, tc.steps, stats, lr, opt, throughput.tokens_per_second(), model);
            throughput.reset();
            if (log) log->write_step(record);
            if (report.on_step) report.on_step(record);
        }
        // steps, seconds and milestones are the same on every rank, and so is this plan
        const StepPlan plan = policy.after_step(state);
        if (plan.eval) {
            const EvalRecord record = evaluate(*plan.eval, plan.milestones);
            for (const Milestone& milestone : plan.milestones) {
                if (report.on_milestone) report.on_milestone(milestone, record);
            }
            if (plan.last) summary.final_eval = record.result;
            throughput.reset();  // evaluation time is not training throughput
        }
        // checkpoint.every_seconds reads each rank's own clock: checkpoint when any rank is due
        if (any_rank(communicator, policy.checkpoint_due(state, plan))) {
            save();
            throughput.reset();
        }
    }
    if (!summary.final_eval) {
        // resumed after the last step had already been taken
        summary.final_eval = task->evaluate(EvalScope::Full, communicator);
        summary.checkpoint = ckpt_path;
    }
    summary.completed = true;
    summary.steps = state.step;
    summary.state = state;
    return summary;
}

}  // namespace upcycle
