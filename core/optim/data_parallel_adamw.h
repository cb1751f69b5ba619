#pragma once
// AdamW for the ranks of a data-parallel job, from the summed micro-batch gradients of each
// rank to the updated parameters, the same on every rank:
//   ZeRO stage 0: the gradients are averaged over the ranks (Communicator::
//     all_reduce_gradients), and every rank updates every parameter with its own copy of the
//     moments;
//   ZeRO stage 1: the moments are sharded. The flat buffer of P parameters is cut into one
//     shard of S = ceil(P / ranks) elements per rank (the last padded past P); the gradients
//     are reduce-scattered (averaged), each rank updates its shard of the parameters with its
//     shard of the moments (weight decay per parameter, as AdamW's layout rule), and the
//     parameters are all-gathered. The clip's global norm is the square root of the shards'
//     sums of squares, summed over the ranks.
// Both give the same step up to the float order of the reductions. One rank is plain AdamW
// whatever the stage. Checkpoints hold every moment whatever the stage and the rank count:
// loading takes this rank's shard, saving gathers the shards first.
#include <cstddef>
#include <filesystem>
#include <memory>

#include "core/checkpoint.h"
#include "core/comm.h"
#include "core/config.h"
#include "core/model/model.h"
#include "core/optim/adamw.h"

namespace upcycle {

// Rank `rank`'s shard of a buffer of num_parameters elements over `ranks` equal shards.
ParameterRange zero_shard(std::size_t num_parameters, int rank, int ranks);

class DataParallelAdamW {
public:
    DataParallelAdamW(Backend& backend, Communicator& ranks, std::size_t num_parameters,
                      int zero_stage);

    // This rank's AdamW: the moments of every parameter, or of its shard (ZeRO-1).
    AdamW& adamw() { return adamw_; }
    bool sharded() const { return sharded_; }

    // The step on the model's gradients (this rank's sum of its micro-batches' mean
    // gradients) · gradient_scale, averaged over the ranks; the model's gradients are
    // consumed (averaged in place with stage 0, left as they were with stage 1). Every rank
    // calls it and gets the same parameters and statistics.
    OptimizerStepStats step(Model& model, const TrainConfig& train, double lr,
                            double gradient_scale);

    // Writes the checkpoint (rank 0) with the moments of every parameter, gathered first with
    // ZeRO-1; every rank calls it, and it returns once the file is written.
    void save_checkpoint(const std::filesystem::path& path, const RunConfig& config, Model& model,
                         const TrainingState& state);

private:
    Backend* backend_;
    Communicator* ranks_;
    std::size_t num_parameters_;
    bool sharded_;
    std::size_t shard_size_;  // S: elements per rank's shard (ZeRO-1)
    AdamW adamw_;
    Tensor padded_;           // [ranks·S]: the gradients to reduce-scatter, then the gather
    Tensor shard_gradients_;  // [S]: this rank's shard of the averaged gradients
};

}  // namespace upcycle
