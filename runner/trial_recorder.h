#pragma once
// The wiring from a training run to the store: a TrialRecorder hands train() an observer
// whose callbacks stream the trial's metric series (train_loss, lr, grad_norm, aux_loss and
// every evaluation metric), routing statistics and budget-milestone evaluations into the
// store, and records the finished trial (its final evaluation for a pretraining, the
// checkpoint artifact, the totals and the provenance). Every figure it stores counts the
// trial's own compute: FLOPs and seconds since `origin`, the state it started from.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/train.h"
#include "core/train_log.h"
#include "runner/store/store.h"

namespace upcycle {

// What a finished trial leaves for the store: what a local worker records at the end, and what
// a cluster task writes to its result.json for `upcycle collect` to record.
struct FinishedTrial {
    TrainingState end;  // cumulative, as the final checkpoint holds it
    // the final evaluation (evaluation_metrics), recorded as budget 0: a pretraining's
    std::optional<nlohmann::json> final_evaluation;
    std::filesystem::path checkpoint;
    int64_t checkpoint_bytes = 0;
    std::string checkpoint_sha256;
    nlohmann::json provenance;
};

// From a completed run; hashes the checkpoint.
FinishedTrial finished_trial(const TrainSummary& summary, bool record_final_evaluation,
                             const std::filesystem::path& checkpoint,
                             const nlohmann::json& provenance);

class TrialRecorder {
public:
    // on_milestone_text: a line for people when a budget milestone is evaluated.
    TrialRecorder(Store& store, int64_t trial_id, const TrainingState& origin,
                  std::function<void(const std::string&)> on_milestone_text);
    TrialRecorder(const TrialRecorder&) = delete;
    TrialRecorder& operator=(const TrialRecorder&) = delete;

    // Callbacks that record into the store (on_message is left for the caller). It refers to
    // this recorder, which must outlive the training run.
    TrainObserver observer();

    // Writes what is still buffered (metric rows go in batches, one transaction each).
    void flush();

    // Records what a trial's log holds (read back up to its checkpoint's step) as the
    // observer would have while it ran: for a resumed trial whose rows the store lost (a
    // deleted database, a kill between a checkpoint and its rows). Rows are upserts, so
    // taking back rows the store already has changes nothing.
    void ingest(const TrainLogContents& log);

    // After a completed run: the final evaluation as budget 0 when the trial is a pretraining
    // (`summary.final_eval`), the checkpoint as an artifact, and the trial done with its totals.
    void finish(const TrainSummary& summary, bool record_final_evaluation,
                const std::filesystem::path& checkpoint, const nlohmann::json& provenance);
    // The same from what the run left (its final evaluation, checkpoint and totals).
    void finish(const FinishedTrial& finished);

    // The trial's own FLOPs and seconds at a cumulative point of the run.
    double own_flops(double flops) const { return flops - origin_.flops; }
    double own_seconds(double seconds) const { return seconds - origin_.seconds; }

private:
    void record_step(const StepRecord& record);
    void record_milestone(double percent, const EvalRecord& record);
    void push_evaluation(const EvalRecord& record);

    Store& store_;
    int64_t trial_id_;
    TrainingState origin_;
    std::function<void(const std::string&)> on_milestone_text_;
    std::vector<MetricRow> metrics_;
    std::vector<RoutingRow> routing_;
};

// An evaluation as stored: val_loss, val_accuracy and whatever else the task measured
// (a ViT's test_accuracy and few-shot probe accuracies at milestones and at the end).
nlohmann::json evaluation_metrics(const EvalResult& result);

}  // namespace upcycle
