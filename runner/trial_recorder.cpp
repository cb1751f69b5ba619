#include "runner/trial_recorder.h"

#include <fmt/format.h>

#include "core/sha256.h"

namespace upcycle {

namespace {

// Metric rows are written in batches of about this many (one transaction each).
constexpr std::size_t kMetricBatch = 256;

}  // namespace

nlohmann::json evaluation_metrics(const EvalResult& result) {
    nlohmann::json metrics{{"val_loss", result.loss}, {"val_accuracy", result.accuracy}};
    for (const auto& [key, value] : result.extra) metrics[key] = value;
    return metrics;
}

TrialRecorder::TrialRecorder(Store& store, int64_t trial_id, const TrainingState& origin,
                             std::function<void(const std::string&)> on_milestone_text)
    : store_(store),
      trial_id_(trial_id),
      origin_(origin),
      on_milestone_text_(std::move(on_milestone_text)) {}

void TrialRecorder::flush() {
    if (!metrics_.empty()) store_.add_metrics(trial_id_, metrics_);
    if (!routing_.empty()) store_.add_routing(trial_id_, routing_);
    metrics_.clear();
    routing_.clear();
}

// every metric of an evaluation, as a series point each
void TrialRecorder::push_evaluation(const EvalRecord& r) {
    const double flops = own_flops(r.flops), seconds = own_seconds(r.seconds);
    const nlohmann::json metrics = evaluation_metrics(r.result);
    for (const auto& [key, value] : metrics.items()) {
        metrics_.push_back({key, r.step, flops, seconds, value.get<double>()});
    }
}

void TrialRecorder::record_step(const StepRecord& r) {
    const double flops = own_flops(r.flops), seconds = own_seconds(r.seconds);
    metrics_.push_back({"train_loss", r.step, flops, seconds, r.loss});
    metrics_.push_back({"lr", r.step, flops, seconds, r.lr});
    metrics_.push_back({"grad_norm", r.step, flops, seconds, r.grad_norm});
    if (!r.moe_layers.empty()) metrics_.push_back({"aux_loss", r.step, flops, seconds, r.aux_loss});
    for (std::size_t i = 0; i < r.routing.size(); ++i) {
        const auto& s = r.routing[i];
        routing_.push_back({r.step, r.moe_layers[i], nlohmann::json(s.tokens_per_expert),
                            s.dropped_fraction, s.router_entropy, s.aux_loss, s.z_loss});
    }
    if (metrics_.size() >= kMetricBatch) flush();
}

void TrialRecorder::record_milestone(double percent, const EvalRecord& r) {
    store_.add_evaluation(trial_id_, percent, r.step, own_flops(r.flops), own_seconds(r.seconds),
                          evaluation_metrics(r.result));
}

TrainObserver TrialRecorder::observer() {
    TrainObserver observer;
    observer.on_step = [this](const StepRecord& r) { record_step(r); };
    observer.on_eval = [this](const EvalRecord& r) {
        push_evaluation(r);
        flush();
    };
    observer.on_milestone = [this](const Milestone& m, const EvalRecord& r) {
        record_milestone(m.percent, r);
        if (on_milestone_text_) {
            on_milestone_text_(fmt::format("budget {:g}% reached at step {}: val_loss {:.4f}",
                                           m.percent, r.step, r.result.loss));
        }
    };
    observer.on_checkpoint = [this](const std::filesystem::path&, int64_t) { flush(); };
    return observer;
}

void TrialRecorder::ingest(const TrainLogContents& log) {
    for (const StepRecord& r : log.steps) record_step(r);
    for (const LoggedEval& e : log.evals) {
        push_evaluation(e.record);
        for (const double percent : e.milestones) record_milestone(percent, e.record);
    }
    flush();
}

FinishedTrial finished_trial(const TrainSummary& summary, bool record_final_evaluation,
                             const std::filesystem::path& checkpoint,
                             const nlohmann::json& provenance) {
    FinishedTrial finished;
    finished.end = summary.state;
    if (record_final_evaluation)
        finished.final_evaluation = evaluation_metrics(*summary.final_eval);
    finished.checkpoint = checkpoint;
    finished.checkpoint_bytes = static_cast<int64_t>(std::filesystem::file_size(checkpoint));
    finished.checkpoint_sha256 = sha256_file(checkpoint);
    finished.provenance = provenance;
    return finished;
}

void TrialRecorder::finish(const TrainSummary& summary, bool record_final_evaluation,
                           const std::filesystem::path& checkpoint,
                           const nlohmann::json& provenance) {
    finish(finished_trial(summary, record_final_evaluation, checkpoint, provenance));
}

void TrialRecorder::finish(const FinishedTrial& finished) {
    flush();
    const double flops = own_flops(finished.end.flops);
    const double seconds = own_seconds(finished.end.seconds);
    if (finished.final_evaluation) {
        store_.add_evaluation(trial_id_, 0, finished.end.step, flops, seconds,
                              *finished.final_evaluation);
    }
    store_.add_artifact(trial_id_, "checkpoint", finished.checkpoint.string(),
                        finished.checkpoint_bytes, finished.checkpoint_sha256);
    TrialProgress totals;
    totals.step = finished.end.step;
    totals.flops = flops;
    totals.seconds = seconds;
    totals.tokens = finished.end.tokens - origin_.tokens;
    store_.finish(trial_id_, totals, finished.provenance);
}

}  // namespace upcycle
