#include "core/data_parallel.h"

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

BatchSplit split_batch(const TrainConfig& train, int ranks, const std::string& config_source) {
    UPCYCLE_ASSERT(ranks >= 1, "a job has at least one rank");
    BatchSplit split;
    split.ranks = ranks;
    if (ranks == 1) {
        split.micro_batch = micro_batch_size(train);
        split.parts_per_rank = micro_batches(train);
        return split;
    }
    const int B = train.batch_size;
    if (train.micro_batch == 0 && B % ranks != 0) {
        throw UserError(config_source, "train.batch_size",
                        fmt::format("a batch of {} examples does not split evenly over {} ranks: "
                                    "expected a multiple of {} (or set train.micro_batch)",
                                    B, ranks, ranks));
    }
    split.micro_batch = train.micro_batch > 0 ? train.micro_batch : B / ranks;
    const int64_t slice = int64_t{ranks} * split.micro_batch;
    if (B % slice != 0) {
        throw UserError(config_source, "train.batch_size",
                        fmt::format("a batch of {} examples does not split into {} ranks × "
                                    "micro-batches of train.micro_batch = {}: expected "
                                    "train.batch_size a multiple of {}, or another micro_batch",
                                    B, ranks, split.micro_batch, slice));
    }
    split.parts_per_rank = static_cast<int>(B / slice);
    return split;
}

RunConfig rank_task_config(const RunConfig& config, const BatchSplit& split) {
    if (split.ranks == 1) return config;
    RunConfig rank_config = config;
    rank_config.train.micro_batch = split.micro_batch;
    return rank_config;
}

ForwardStats forward_backward_slice(TrainingTask& task, int64_t step, const BatchSplit& split,
                                    int rank, Rng& data_rng) {
    const int first = split.first_part(rank);
    const int last = first + split.parts_per_rank;  // exclusive
    ForwardStats stats;
    for (int part = 0; part < split.total_parts(); ++part) {
        if (part < first || part >= last) {
            task.skip_train_batch(step, part, data_rng);
            continue;
        }
        const ForwardStats micro = task.train_forward(step, part, data_rng);  // aux: see .h
        task.model().backward(part == first ? Gradients::Overwrite : Gradients::Accumulate);
        stats.loss_sum += micro.loss_sum;
        stats.tokens += micro.tokens;
        stats.aux_loss += micro.aux_loss / split.parts_per_rank;
    }
    return stats;
}

bool any_rank(Communicator& ranks, bool mine) {
    double count = mine ? 1.0 : 0.0;
    ranks.all_reduce_host(&count, 1, ReduceOp::Sum);
    return count > 0;
}

}  // namespace upcycle
