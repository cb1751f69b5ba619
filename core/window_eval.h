#pragma once
// Evaluation over fixed windows of a token sequence, for corpora of token ids
// (core/data/token_shards.h): the same rules as evaluate_text (core/eval.h) — windows of T+1
// tokens every T tokens, a final partial window dropped, max_windows evenly spaced ones when
// not all, the loss averaged over every predicted token.
#include <cstdint>
#include <functional>
#include <vector>

#include "core/comm.h"
#include "core/data/token_shards.h"
#include "core/eval.h"
#include "core/model/gpt.h"

namespace upcycle {

// Fills inputs and targets ([windows.size()·T] each) with the given windows.
using FillWindows =
    std::function<void(const std::vector<int64_t>& windows, std::vector<int32_t>& inputs,
                       std::vector<int32_t>& targets)>;

// The loop every window evaluation shares: the windows in chunks of the model's max batch,
// the chunks spread over the ranks (core/eval_chunks.h; every rank gets the result, the same
// as one process's).
EvalResult evaluate_windows(Gpt& model, const std::vector<int64_t>& windows,
                            const FillWindows& fill, Communicator& ranks = local_communicator());

// The validation windows of token files (all of them when max_windows is 0).
EvalResult evaluate_tokens(Gpt& model, const TokenShards& shards, int64_t max_windows = 0,
                           Communicator& ranks = local_communicator());

}  // namespace upcycle
