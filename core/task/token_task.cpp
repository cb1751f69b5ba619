// The token task: a GPT on windows of token ids from llm.c / nanoGPT files
// (core/data/token_shards.h), trained on data.train_glob and evaluated on data.val_glob.
#include "core/task/token_task.h"

#include <fmt/format.h>

#include "core/data/token_shards.h"
#include "core/errors.h"
#include "core/model/gpt.h"
#include "core/window_eval.h"

namespace upcycle {

namespace {

TokenShards open_split(const std::string& pattern, const char* key, const ModelConfig& model,
                       const std::string& source) {
    if (pattern.empty()) {
        throw UserError(source, key,
                        std::string("data.source: tokens needs ") + key +
                            ": a glob pattern of llm.c shards or raw uint16 .bin files (e.g. "
                            "\"data/fineweb_train_*.bin\")");
    }
    TokenShards shards(glob_token_files(pattern, source, key));
    shards.check_vocabulary(model.vocab_size);
    return shards;
}

class TokenTask final : public TrainingTask {
public:
    TokenTask(Backend& backend, const RunConfig& config, const std::string& source,
              Communicator* expert_parallel)
        : config_(config),
          train_(open_split(config.data.train_glob, "data.train_glob", config.model, source)),
          validation_(open_split(config.data.val_glob, "data.val_glob", config.model, source)),
          model_(backend, config.model, micro_batch_size(config.train), expert_parallel) {
        const int T = config.model.context;
        if (train_.count_train_starts(T) == 0) {
            throw UserError(source, "data.train_glob",
                            fmt::format("no training file holds a window of {} tokens ({})", T + 1,
                                        train_.describe()));
        }
        if (validation_.count_eval_windows(T) == 0) {
            throw UserError(source, "data.val_glob",
                            fmt::format("no validation file holds a window of {} tokens ({})",
                                        T + 1, validation_.describe()));
        }
    }

    Model& model() override { return model_; }
    ForwardStats train_forward(int64_t /*step*/, int /*part*/, Rng& data_rng) override {
        draw(data_rng);
        return model_.forward(inputs_, targets_, micro_batch_size(config_.train), Pass::Train);
    }
    void skip_train_batch(int64_t /*step*/, int /*part*/, Rng& data_rng) override {
        draw(data_rng);
    }
    EvalResult evaluate(EvalScope /*scope: the validation files are the only split*/,
                        Communicator& ranks) override {
        return evaluate_tokens(model_, validation_, config_.eval.max_windows, ranks);
    }
    std::string prediction_unit() const override { return "tokens"; }

private:
    // as for text: windows drawn one after another from data_rng, so the parts in order
    // draw the windows of the whole batch and a resumed run continues the stream
    void draw(Rng& data_rng) {
        const int B = micro_batch_size(config_.train);
        train_.sample_batch(B, config_.model.context, data_rng, inputs_, targets_);
    }

    RunConfig config_;
    TokenShards train_;
    TokenShards validation_;
    Gpt model_;
    std::vector<int32_t> inputs_, targets_;  // [B·T]
};

}  // namespace

std::unique_ptr<TrainingTask> make_token_task(Backend& backend, const RunConfig& config,
                                              const std::string& config_source,
                                              Communicator* expert_parallel) {
    return std::make_unique<TokenTask>(backend, config, config_source, expert_parallel);
}

}  // namespace upcycle
