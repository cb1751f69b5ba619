#pragma once
// One training run: data → model → AdamW steps with the configured schedule, periodic
// evaluation on the held-out split, atomic checkpoints, and resumption from the latest
// checkpoint in the output directory (bit-identical to an uninterrupted run). A data-parallel
// job runs it on every rank with the same config and output directory; its checkpoints are
// those of one process, and resume on any number of ranks.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/comm.h"
#include "core/config.h"
#include "core/eval.h"
#include "core/moe/router.h"

namespace upcycle {

struct StepRecord {
    int64_t step = 0;  // optimizer step just taken (1-based)
    int64_t total_steps = 0;
    double loss = 0;  // training loss of this step's batch
    double lr = 0;
    double grad_norm = 0;
    int64_t tokens = 0;                 // cumulative training tokens
    double flops = 0;                   // cumulative training FLOPs
    double seconds = 0;                 // cumulative training wall seconds
    double tokens_per_second = 0;       // over the last logging interval
    double aux_loss = 0;                // MoE auxiliary losses of this step (coefficient-weighted)
    std::vector<int> moe_layers;        // blocks with an MoE layer
    std::vector<RoutingStats> routing;  // their routing statistics, same order: of the
                                        // step's last micro-batch (rank 0's, in a
                                        // data-parallel job)
};

// A budget milestone: evaluate (and checkpoint) once the run reaches this step, or once it
// has trained this many seconds since `TrainOptions::seconds_origin`.
struct Milestone {
    double percent = 0;   // the budget it stands for (% of the sunk cost), for reports
    int64_t step = -1;    // reached when the step counter is ≥ step (if ≥ 0)
    double seconds = -1;  // reached when training seconds − seconds_origin ≥ this (if ≥ 0)
};

struct EvalRecord {
    int64_t step = 0;
    double flops = 0;
    double seconds = 0;
    EvalResult result;
};

// Callbacks for progress display and logs. Steps are reported every train.log_every steps.
// In a job of several ranks only rank 0 reports (and writes log.jsonl and the checkpoints).
struct TrainObserver {
    std::function<void(const StepRecord&)> on_step;
    std::function<void(const EvalRecord&)> on_eval;
    std::function<void(const std::filesystem::path&, int64_t step)> on_checkpoint;
    std::function<void(const std::string&)> on_message;
    std::function<void(const Milestone&, const EvalRecord&)> on_milestone;
};

struct TrainOptions {
    std::filesystem::path out_dir;  // checkpoint.safetensors and log.jsonl go here
    bool resume = true;             // continue from out_dir's checkpoint if any
    const std::atomic<bool>* stop_requested =
        nullptr;  // set by a signal handler: checkpoint, return
    // Start from this checkpoint (e.g. one made by surgery) instead of a fresh init: its
    // weights, optimizer moments if it has them (else AdamW starts fresh) and training state
    // (step counter, tokens, FLOPs, seconds, data stream). Its model config must equal the
    // run's. Ignored when out_dir already holds a checkpoint to resume.
    std::filesystem::path init_from;
    // Budget milestones, ascending; each is evaluated and checkpointed when reached (and not
    // again after a resume past it). With stop_at_last_milestone the run completes there
    // (used for budgets in seconds, where train.steps is only an upper bound).
    std::vector<Milestone> milestones;
    double seconds_origin = 0;
    bool stop_at_last_milestone = false;
    // The ranks of a data-parallel job (core/data_parallel.h): each trains on its slice of
    // every batch, the gradients are averaged before each optimizer step (train.zero_stage:
    // with the moments sharded), evaluations are shared, and the ranks agree on the logged
    // loss, divergence, stop requests, milestones and checkpoints. One process is the 1-rank
    // local communicator. Never null.
    Communicator* communicator = &local_communicator();
};

struct TrainSummary {
    int64_t steps = 0;
    bool completed = false;  // false if stopped early
    bool resumed = false;
    int64_t resumed_from_step = 0;
    bool initialized_from_checkpoint = false;
    std::optional<EvalResult> final_eval;
    TrainingState state;
    std::filesystem::path checkpoint;
};

// The training-batch stream of a fresh run with this train.seed (a checkpoint made outside
// training, e.g. by import, starts its data stream here too).
Rng data_stream(uint64_t seed);

// The checkpoint file train() keeps in out_dir (always the latest).
std::filesystem::path checkpoint_path(const std::filesystem::path& out_dir);

TrainSummary train(Backend& backend, const RunConfig& config, const TrainOptions& options,
                   const TrainObserver& observer = {});

}  // namespace upcycle
