#pragma once
// What one run trains on and how it is measured: the model, its training batches and its
// evaluation. The trainer (core/train.h) is the same for every architecture; a task supplies
//   text  (model.arch gpt): byte windows of a corpus, next-byte loss and accuracy;
//   token (model.arch gpt, data.source tokens): windows of token ids from llm.c / nanoGPT
//         files, next-token loss and accuracy;
//   image (model.arch vit): Fashion-MNIST images, classification loss and accuracy, and at the
//         end and at budget milestones the test split's accuracy and the few-shot probe.
#include <cstdint>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/comm.h"
#include "core/config.h"
#include "core/eval.h"
#include "core/model/model.h"
#include "core/rng.h"

namespace upcycle {

enum class EvalScope {
    Validation,  // the validation split only (periodic evaluations)
    Full,        // also the test split's metrics (budget milestones and the end of a run)
};

class TrainingTask {
public:
    virtual ~TrainingTask() = default;

    virtual Model& model() = 0;
    // Draws micro-batch `part` (0-based, of micro_batches(train) parts) of the batch for
    // optimizer step `step` (steps already taken, 0-based) and runs a Train forward on it.
    // The parts, drawn in order, are exactly the batch one part of train.batch_size would
    // be. data_rng is the data stream's generator, saved in checkpoints, so a resumed run
    // draws exactly the batches an uninterrupted one would.
    virtual ForwardStats train_forward(int64_t step, int part, Rng& data_rng) = 0;
    // Draws micro-batch `part` as train_forward would, without the forward: the parts of the
    // batch that other ranks of a data-parallel job train on (core/data_parallel.h).
    virtual void skip_train_batch(int64_t step, int part, Rng& data_rng) = 0;
    // ranks: the ranks of a job, which share the evaluation and all get its result (the same
    // as one process's); every rank calls it.
    virtual EvalResult evaluate(EvalScope scope, Communicator& ranks = local_communicator()) = 0;
    // What one evaluated prediction is, for messages: "bytes" or "images".
    virtual std::string prediction_unit() const = 0;
};

// Gradient accumulation: the examples of one forward pass, and how many such passes make
// one optimizer step (train.batch_size / train.micro_batch; 1 without accumulation).
int micro_batch_size(const TrainConfig& train);
int micro_batches(const TrainConfig& train);

// The task of a run config (its model.arch and data); loads the data (UserError naming
// config_source and the data key when it cannot) and builds the model for micro-batches of
// micro_batch_size(train) examples (weights uninitialised). communicator: the ranks of the
// job; with train.expert_parallel the MoE layers' experts are spread over them (UserError
// naming model.moe.experts unless they divide evenly), and every forward of the task's model
// is then a collective of them.
std::unique_ptr<TrainingTask> make_training_task(Backend& backend, const RunConfig& config,
                                                 const std::string& config_source,
                                                 Communicator& communicator = local_communicator());

}  // namespace upcycle
