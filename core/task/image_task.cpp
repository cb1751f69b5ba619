// The image task: a ViT on Fashion-MNIST (core/data/image_batches.h). Validation loss and
// accuracy on the fixed validation split; full evaluations add the test split's loss and
// accuracy and the few-shot linear probe (core/probe.h) on the frozen class-token features.
#include "core/task/image_task.h"

#include <algorithm>

#include "core/data/fashion_mnist.h"
#include "core/data/image_batches.h"
#include "core/errors.h"
#include "core/eval_chunks.h"
#include "core/model/vit.h"
#include "core/probe.h"

namespace upcycle {

namespace {

// The probe draws its n-shot examples from this many training images (the first ones of the
// training split, ~100 per class): enough for different draws per seed at 10 shots, few
// enough that their features cost little.
constexpr int64_t kProbePoolImages = 1000;
// The probe's draws are the same for every trial (a fixed seed), so methods are compared on
// the same examples.
constexpr uint64_t kProbeSeed = 0x9B0BE5EEDULL;

class ImageTask final : public TrainingTask {
public:
    ImageTask(Backend& backend, const RunConfig& config, const std::string& source,
              Communicator* expert_parallel)
        : config_(config),
          splits_(load_splits(config, source)),
          sampler_(splits_, config.train.seed, config.data.augment, config.data.crop_padding),
          model_(backend, config.model, micro_batch_size(config.train), expert_parallel),
          probe_shots_(probe_shot_counts(config.eval, source)) {}

    Model& model() override { return model_; }
    ForwardStats train_forward(int64_t step, int part, Rng& data_rng) override {
        draw(step, part, data_rng);
        return model_.forward(images_, labels_, micro_batch_size(config_.train), Pass::Train);
    }
    void skip_train_batch(int64_t step, int part, Rng& data_rng) override {
        draw(step, part, data_rng);
    }
    EvalResult evaluate(EvalScope scope, Communicator& ranks) override {
        const int64_t validation = splits_.validation.count();
        const int64_t max_images = config_.eval.max_images;
        EvalResult result = evaluate_part(
            ImageSplitPart::Validation,
            max_images > 0 ? std::min(max_images, validation) : validation, nullptr, ranks);
        if (scope == EvalScope::Full) {
            std::vector<float> test_features;
            const EvalResult test =
                evaluate_part(ImageSplitPart::Test, splits_.test.count(), &test_features, ranks);
            result.extra["test_loss"] = test.loss;
            result.extra["test_accuracy"] = test.accuracy;
            if (!probe_shots_.empty()) add_probe(test_features, result, ranks);
        }
        return result;
    }
    std::string prediction_unit() const override { return "images"; }

private:
    static ImageSplits load_splits(const RunConfig& config, const std::string& source) {
        const auto dir = fashion_mnist_dir();
        const ImageDataset train = load_fashion_mnist(FashionMnistSplit::Train, dir);
        const ImageDataset test = load_fashion_mnist(FashionMnistSplit::Test, dir);
        ImageSplits splits = make_image_splits(train, test, config.data.validation_images,
                                               config.data.train_images, source);
        const int side = config.model.image_size;
        if (splits.rows != side || splits.cols != side) {
            throw UserError(source, "model.image_size",
                            "expected the data's image side " + std::to_string(splits.rows) +
                                ", found " + std::to_string(side));
        }
        if (splits.classes > config.model.classes) {
            throw UserError(source, "model.classes",
                            "the data has " + std::to_string(splits.classes) + " classes, found " +
                                std::to_string(config.model.classes));
        }
        return splits;
    }

    // Micro-batch `part` of step `step`: the images at its positions of the epoch order (and
    // their augmentation, drawn from data_rng).
    void draw(int64_t step, int part, Rng& data_rng) {
        const int B = micro_batch_size(config_.train);
        sampler_.sample_positions(step * config_.train.batch_size + int64_t{part} * B, B, data_rng,
                                  images_, labels_);
    }

    // Loss and accuracy over the first `count` images of a part, in batches of the model's size
    // spread over the ranks (core/eval_chunks.h); with `features`, also their class-token
    // features [count, C], on every rank.
    EvalResult evaluate_part(ImageSplitPart part, int64_t count, std::vector<float>* features,
                             Communicator& ranks) {
        EvalResult result;
        const int64_t batch = model_.max_batch();
        const int64_t chunks = (count + batch - 1) / batch;
        const auto C = static_cast<std::size_t>(config_.model.channels);
        if (features) features->assign(static_cast<std::size_t>(count) * C, 0.0f);
        const auto stats = evaluate_chunks(ranks, chunks, [&](int64_t chunk, bool counted) {
            const int64_t first = chunk * batch;
            const int64_t n = std::min(batch, count - first);
            normalised_images(splits_, part, first, n, images_, labels_);
            const auto s = model_.forward(images_, labels_, static_cast<int>(n), Pass::Evaluate);
            if (features && counted) {
                const auto f = model_.features_host();  // [n, C]
                std::copy(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n * C),
                          features->begin() + static_cast<std::ptrdiff_t>(first * C));
            }
            return s;
        });
        if (features && ranks.size() > 1) {
            // each row is one rank's, zero on the others: the sum (in double, exact) is every row
            std::vector<double> all(features->begin(), features->end());
            ranks.all_reduce_host(all.data(), all.size(), ReduceOp::Sum);
            std::copy(all.begin(), all.end(), features->begin());
        }
        double loss_sum = 0;
        int64_t correct = 0;
        for (const ForwardStats& s : stats) {  // in chunk order, as one process sums them
            loss_sum += s.loss_sum;
            correct += s.correct;
            result.tokens += s.tokens;
            ++result.windows;
        }
        if (result.tokens > 0) {
            result.loss = loss_sum / static_cast<double>(result.tokens);
            result.accuracy = static_cast<double>(correct) / static_cast<double>(result.tokens);
        }
        return result;
    }

    // probe_{n}shot_accuracy: ridge heads fitted on n pool images per class, tested on the
    // test split's features, averaged over eval.probe_seeds draws.
    void add_probe(const std::vector<float>& test_features, EvalResult& result,
                   Communicator& ranks) {
        const int64_t pool = std::min(kProbePoolImages, splits_.train.count());
        std::vector<float> pool_features;
        evaluate_part(ImageSplitPart::Train, pool, &pool_features, ranks);
        const std::vector<int32_t> pool_labels(splits_.train.labels.begin(),
                                               splits_.train.labels.begin() + pool);
        const auto probe =
            few_shot_probe(pool_features, pool_labels, test_features, splits_.test.labels,
                           config_.model.channels, config_.model.classes, probe_shots_,
                           config_.eval.probe_seeds, kProbeSeed, config_.eval.probe_ridge);
        for (const auto& r : probe) {
            result.extra["probe_" + std::to_string(r.shots) + "shot_accuracy"] = r.mean_accuracy;
        }
    }

    RunConfig config_;
    ImageSplits splits_;
    ImageBatchSampler sampler_;
    Vit model_;
    std::vector<int> probe_shots_;
    std::vector<float> images_;
    std::vector<int32_t> labels_;
};

}  // namespace

std::unique_ptr<TrainingTask> make_image_task(Backend& backend, const RunConfig& config,
                                              const std::string& config_source,
                                              Communicator* expert_parallel) {
    return std::make_unique<ImageTask>(backend, config, config_source, expert_parallel);
}

}  // namespace upcycle
