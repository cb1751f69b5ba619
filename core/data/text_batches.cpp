#include "core/data/text_batches.h"

#include "core/data/kjv.h"
#include "core/data/synthetic.h"
#include "core/errors.h"

namespace upcycle {

namespace {
TextCorpus split_tail(std::string text, double validation_fraction, std::string description) {
    const auto held_out =
        static_cast<std::size_t>(static_cast<double>(text.size()) * validation_fraction);
    TextCorpus corpus;
    corpus.validation = text.substr(text.size() - held_out);
    text.resize(text.size() - held_out);
    corpus.train = std::move(text);
    corpus.description = std::move(description);
    return corpus;
}
}  // namespace

TextCorpus load_text_corpus(const DataConfig& data, const std::string& config_source) {
    if (data.source == DataSource::Kjv) return load_kjv();
    if (data.source == DataSource::Text) {
        return split_tail(read_text_file(data.path), data.validation_fraction,
                          "text file " + data.path);
    }
    if (data.source == DataSource::Synthetic) {
        auto synthetic = make_synthetic_text(static_cast<std::size_t>(data.synthetic_bytes),
                                             data.synthetic_seed);
        return split_tail(std::move(synthetic.text), data.validation_fraction,
                          "synthetic Markov text");
    }
    throw UserError(config_source, "data.source",
                    "a text model reads kjv, synthetic or text, not " + to_string(data.source));
}

void sample_text_batch(std::string_view text, int B, int T, Rng& rng, std::vector<int32_t>& inputs,
                       std::vector<int32_t>& targets) {
    UPCYCLE_ASSERT(text.size() > static_cast<std::size_t>(T) + 1, "text shorter than a window");
    inputs.resize(static_cast<std::size_t>(B) * T);
    targets.resize(static_cast<std::size_t>(B) * T);
    const uint64_t starts = text.size() - static_cast<std::size_t>(T);  // offsets 0..size-T-1
    for (int b = 0; b < B; ++b) {
        const std::size_t o = rng.below(starts);
        const std::size_t row = static_cast<std::size_t>(b) * T;
        copy_window(text, o, T, inputs.data() + row, targets.data() + row);
    }
}

int64_t count_eval_windows(std::size_t text_bytes, int T) {
    if (text_bytes < static_cast<std::size_t>(T) + 1) return 0;
    return static_cast<int64_t>((text_bytes - 1) / static_cast<std::size_t>(T));
}

void fill_eval_windows(std::string_view text, int T, const std::vector<int64_t>& windows,
                       std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
    inputs.resize(windows.size() * T);
    targets.resize(windows.size() * T);
    for (std::size_t r = 0; r < windows.size(); ++r) {
        const std::size_t o = static_cast<std::size_t>(windows[r]) * T;
        UPCYCLE_ASSERT(o + T < text.size(), "evaluation window past the end of the text");
        copy_window(text, o, T, inputs.data() + r * T, targets.data() + r * T);
    }
}

std::vector<int64_t> select_eval_windows(int64_t count, int64_t max_windows) {
    std::vector<int64_t> out;
    if (max_windows <= 0 || max_windows >= count) {
        for (int64_t w = 0; w < count; ++w) out.push_back(w);
        return out;
    }
    for (int64_t i = 0; i < max_windows; ++i) out.push_back(i * count / max_windows);
    return out;
}

}  // namespace upcycle
