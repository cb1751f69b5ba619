#include "core/window_eval.h"

#include <algorithm>

#include "core/data/text_batches.h"
#include "core/eval_chunks.h"

namespace upcycle {

EvalResult evaluate_windows(Gpt& model, const std::vector<int64_t>& windows,
                            const FillWindows& fill, Communicator& ranks) {
    EvalResult result;
    result.windows = static_cast<int64_t>(windows.size());
    if (windows.empty()) return result;
    std::vector<int32_t> inputs, targets;  // [B·T]
    const auto batch = static_cast<std::size_t>(model.max_batch());
    const auto chunks = static_cast<int64_t>((windows.size() + batch - 1) / batch);
    const auto stats = evaluate_chunks(ranks, chunks, [&](int64_t chunk, bool /*counted*/) {
        const std::size_t first = static_cast<std::size_t>(chunk) * batch;
        const std::size_t count = std::min(batch, windows.size() - first);
        const std::vector<int64_t> part(
            windows.begin() + static_cast<std::ptrdiff_t>(first),
            windows.begin() + static_cast<std::ptrdiff_t>(first + count));
        fill(part, inputs, targets);
        return model.forward(inputs, targets, static_cast<int>(count), Pass::Evaluate);
    });
    double loss_sum = 0;
    int64_t correct = 0;
    for (const ForwardStats& s : stats) {  // in chunk order, as one process sums them
        loss_sum += s.loss_sum;
        correct += s.correct;
        result.tokens += s.tokens;
    }
    result.loss = loss_sum / static_cast<double>(result.tokens);
    result.accuracy = static_cast<double>(correct) / static_cast<double>(result.tokens);
    return result;
}

EvalResult evaluate_tokens(Gpt& model, const TokenShards& shards, int64_t max_windows,
                           Communicator& ranks) {
    const int T = model.config().context;
    const auto windows = select_eval_windows(shards.count_eval_windows(T), max_windows);
    return evaluate_windows(
        model, windows,
        [&](const std::vector<int64_t>& chunk, std::vector<int32_t>& inputs,
            std::vector<int32_t>& targets) { shards.fill_eval_windows(T, chunk, inputs, targets); },
        ranks);
}

}  // namespace upcycle
