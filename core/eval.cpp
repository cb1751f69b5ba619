#include "core/eval.h"

#include "core/data/text_batches.h"
#include "core/window_eval.h"

namespace upcycle {

EvalResult evaluate_text(Gpt& model, std::string_view text, int64_t max_windows,
                         Communicator& ranks) {
    const int T = model.config().context;
    const auto windows = select_eval_windows(count_eval_windows(text.size(), T), max_windows);
    return evaluate_windows(
        model, windows,
        [&](const std::vector<int64_t>& chunk, std::vector<int32_t>& inputs,
            std::vector<int32_t>& targets) { fill_eval_windows(text, T, chunk, inputs, targets); },
        ranks);
}

}  // namespace upcycle
