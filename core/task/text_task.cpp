// The text task: a GPT on byte windows of a corpus (core/data/text_batches.h).
#include "core/task/text_task.h"

#include "core/data/kjv.h"
#include "core/data/text_batches.h"
#include "core/errors.h"
#include "core/model/gpt.h"

namespace upcycle {

namespace {

class TextTask final : public TrainingTask {
public:
    TextTask(Backend& backend, const RunConfig& config, const std::string& source,
             Communicator* expert_parallel)
        : config_(config),
          corpus_(load_text_corpus(config.data, source)),
          model_(backend, config.model, micro_batch_size(config.train), expert_parallel) {
        const std::size_t window = static_cast<std::size_t>(config.model.context) + 1;
        if (corpus_.train.size() <= window || corpus_.validation.size() < window) {
            throw UserError(
                source, "data",
                "the text is too short for windows of " + std::to_string(window) + " bytes");
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
    EvalResult evaluate(EvalScope /*scope: the held-out text is the only split*/,
                        Communicator& ranks) override {
        return evaluate_text(model_, corpus_.validation, config_.eval.max_windows, ranks);
    }
    std::string prediction_unit() const override { return "bytes"; }

private:
    // windows are drawn one after another from data_rng: the parts in order draw the
    // windows of the whole batch
    void draw(Rng& data_rng) {
        const int B = micro_batch_size(config_.train);
        sample_text_batch(corpus_.train, B, config_.model.context, data_rng, inputs_, targets_);
    }

    RunConfig config_;
    TextCorpus corpus_;
    Gpt model_;
    std::vector<int32_t> inputs_, targets_;
};

}  // namespace

std::unique_ptr<TrainingTask> make_text_task(Backend& backend, const RunConfig& config,
                                             const std::string& config_source,
                                             Communicator* expert_parallel) {
    return std::make_unique<TextTask>(backend, config, config_source, expert_parallel);
}

}  // namespace upcycle
