#pragma once
// Evaluation: mean next-token cross-entropy and accuracy over fixed windows of a text.
#include <string_view>

#include "core/model/gpt.h"

namespace upcycle {

struct EvalResult {
    double loss = 0;        // mean cross-entropy per predicted byte (nats)
    double accuracy = 0;    // fraction of bytes whose argmax prediction is right
    int64_t tokens = 0;     // predicted bytes
    int64_t windows = 0;
};

// Windows of T+1 bytes every T bytes (final partial dropped); max_windows > 0 evaluates that
// many evenly spaced windows instead of all. Loss is averaged over every predicted byte.
EvalResult evaluate_text(Gpt& model, std::string_view text, int64_t max_windows = 0);

}  // namespace upcycle
