#pragma once
// Data parallelism: how the ranks of a job split one optimizer step's batch, and how they
// agree on what steers the run.
//
// Every rank draws the same global batch from the one seeded data stream (drawing is sampling
// offsets and copying a few windows: cheap) and trains on its own slice of it. The batch of B
// examples is ranks·parts micro-batches of micro_batch examples, numbered in the order one
// process draws them, and rank r takes parts [r·parts, (r+1)·parts). So the data order, and
// the data stream a checkpoint carries, are the same on any number of ranks (a checkpoint
// resumes on any world size and continues the same data), and N ranks compute exactly the
// gradient-accumulation step of one process with train.micro_batch = micro_batch — for an
// MoE too, whose routing, capacity and aux losses are per micro-batch in both — up to the
// float order of the reduction over ranks.
#include <cstdint>
#include <string>

#include "core/comm.h"
#include "core/config.h"
#include "core/model/model.h"
#include "core/rng.h"
#include "core/task/task.h"

namespace upcycle {

struct BatchSplit {
    int ranks = 1;
    int micro_batch = 1;     // examples per forward pass
    int parts_per_rank = 1;  // forward passes of each rank per optimizer step
    int total_parts() const { return ranks * parts_per_rank; }
    int first_part(int rank) const { return rank * parts_per_rank; }
};

// The split of train.batch_size over `ranks`: micro-batches of train.micro_batch examples, or
// without it one pass of batch_size / ranks per rank. UserError naming train.batch_size (and
// train.micro_batch) unless the batch divides into ranks · micro-batches.
BatchSplit split_batch(const TrainConfig& train, int ranks, const std::string& config_source);

// The config a rank's task is built from: train.micro_batch is the split's, so that the task
// draws and numbers the micro-batches of the whole batch as one process with that
// micro_batch would. One rank: the config itself.
RunConfig rank_task_config(const RunConfig& config, const BatchSplit& split);

// This rank's forward and backward passes of optimizer step `step` (0-based): the other
// ranks' parts are drawn and skipped, this rank's parts run and their mean gradients summed
// into the model's gradients (the optimizer takes their mean with gradient_scale
// 1/parts_per_rank). Returns this rank's stats, aux_loss the mean over its parts (0 while the
// model does not report it).
ForwardStats forward_backward_slice(TrainingTask& task, int64_t step, const BatchSplit& split,
                                    int rank, Rng& data_rng);

// Whether `mine` is true on any rank (every rank calls it, and gets the same answer).
bool any_rank(Communicator& ranks, bool mine);

}  // namespace upcycle
