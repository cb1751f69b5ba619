#pragma once
// Evaluation results, and the text evaluation: mean next-token cross-entropy and accuracy
// over fixed windows of a text.
#include <map>
#include <string>
#include <string_view>

#include "core/comm.h"
#include "core/model/gpt.h"

namespace upcycle {

struct EvalResult {
    double loss = 0;      // mean cross-entropy per prediction (nats): a byte, or an image
    double accuracy = 0;  // fraction of predictions whose argmax is right
    int64_t tokens = 0;   // predictions: bytes, or images
    int64_t windows = 0;  // text windows, or image batches
    // Metrics beyond the validation split's, by their store key (e.g. test_accuracy,
    // probe_10shot_accuracy): only from full evaluations of tasks that have them.
    std::map<std::string, double> extra;
};

// Windows of T+1 bytes every T bytes (final partial dropped); max_windows > 0 evaluates that
// many evenly spaced windows instead of all. Loss is averaged over every predicted byte.
// ranks: the ranks of a job, which share the windows and all get the result (the same as one
// process's); every rank calls it.
EvalResult evaluate_text(Gpt& model, std::string_view text, int64_t max_windows = 0,
                         Communicator& ranks = local_communicator());

}  // namespace upcycle
