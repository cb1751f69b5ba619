#include "core/window_eval.h"

#include <algorithm>

#include "core/data/text_batches.h"

namespace upcycle {

EvalResult evaluate_windows(Gpt& model, const std::vector<int64_t>& windows,
                            const FillWindows& fill) {
    EvalResult result;
    result.windows = static_cast<int64_t>(windows.size());
    if (windows.empty()) return result;
    double loss_sum = 0;
    int64_t correct = 0;
    std::vector<int32_t> inputs, targets;  // [B·T]
    const auto batch = static_cast<std::size_t>(model.max_batch());
    for (std::size_t first = 0; first < windows.size(); first += batch) {
        const std::size_t count = std::min(batch, windows.size() - first);
        const std::vector<int64_t> chunk(
            windows.begin() + static_cast<std::ptrdiff_t>(first),
            windows.begin() + static_cast<std::ptrdiff_t>(first + count));
        fill(chunk, inputs, targets);
        const auto stats = model.forward(inputs, targets, static_cast<int>(count), Pass::Evaluate);
        loss_sum += stats.loss_sum;
        correct += stats.correct;
        result.tokens += stats.tokens;
    }
    result.loss = loss_sum / static_cast<double>(result.tokens);
    result.accuracy = static_cast<double>(correct) / static_cast<double>(result.tokens);
    return result;
}

EvalResult evaluate_tokens(Gpt& model, const TokenShards& shards, int64_t max_windows) {
    const int T = model.config().context;
    const auto windows = select_eval_windows(shards.count_eval_windows(T), max_windows);
    return evaluate_windows(model, windows,
                            [&](const std::vector<int64_t>& chunk, std::vector<int32_t>& inputs,
                                std::vector<int32_t>& targets) {
                                shards.fill_eval_windows(T, chunk, inputs, targets);
                            });
}

}  // namespace upcycle
