#include "core/data/image_batches.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "core/data/fashion_mnist.h"
#include "core/errors.h"

namespace upcycle {

namespace {

// The validation split's permutation: constant, so every trial of a sweep shares the split.
constexpr uint64_t kImageSplitSeed = 0x5eed'f00d'1234'abcdULL;
constexpr float kPixelMax = 255.0f;
constexpr int kPixelValues = 256;

// splitmix64's finaliser: a bijection of 64-bit words.
uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
    return mix64(mix64(seed) + static_cast<uint64_t>(epoch));
}

// Fisher–Yates permutation of 0..n-1.
std::vector<int32_t> permutation(int64_t n, Rng& rng) {
    std::vector<int32_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
        std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
    }
    return order;
}

// The images `indices` of `data` (ascending order kept as given).
ImageSet gather(const ImageDataset& data, const std::vector<int32_t>& indices) {
    const std::size_t size = static_cast<std::size_t>(data.rows) * data.cols;
    ImageSet set;
    set.pixels.resize(indices.size() * size);
    set.labels.resize(indices.size());
    set.sources = indices;
    for (std::size_t k = 0; k < indices.size(); ++k) {
        const auto i = static_cast<std::size_t>(indices[k]);
        std::copy_n(data.pixels.begin() + static_cast<std::ptrdiff_t>(i * size), size,
                    set.pixels.begin() + static_cast<std::ptrdiff_t>(k * size));
        set.labels[k] = data.labels[i];
    }
    return set;
}

std::array<float, kPixelValues> normalisation_table(const ImageSplits& data) {
    std::array<float, kPixelValues> table{};
    for (int v = 0; v < kPixelValues; ++v) table[v] = data.normalise(static_cast<uint8_t>(v));
    return table;
}

void check_dataset(const ImageDataset& data, const char* name) {
    if (data.count <= 0 || data.rows <= 0 || data.cols <= 0) {
        throw UserError("", "data", std::string("the ") + name + " images are empty");
    }
    UPCYCLE_ASSERT(
        data.pixels.size() == static_cast<std::size_t>(data.count) * data.rows * data.cols &&
            data.labels.size() == static_cast<std::size_t>(data.count),
        "ImageDataset sizes disagree with its count");
}

}  // namespace

const ImageSet& ImageSplits::part(ImageSplitPart which) const {
    switch (which) {
        case ImageSplitPart::Train: return train;
        case ImageSplitPart::Validation: return validation;
        case ImageSplitPart::Test: return test;
    }
    assertion_failed("which", __FILE__, __LINE__, "unknown ImageSplitPart");
}

ImageSplits make_image_splits(const ImageDataset& train, const ImageDataset& test,
                              int64_t validation_images, int64_t train_images,
                              const std::string& config_source) {
    check_dataset(train, "training");
    check_dataset(test, "test");
    if (train.rows != test.rows || train.cols != test.cols) {
        throw UserError("", "data",
                        "training images are " + std::to_string(train.rows) + "x" +
                            std::to_string(train.cols) + " but test images are " +
                            std::to_string(test.rows) + "x" + std::to_string(test.cols));
    }
    ImageSplits splits;
    splits.rows = train.rows;
    splits.cols = train.cols;
    int max_label = 0;
    for (uint8_t l : train.labels) max_label = std::max<int>(max_label, l);
    for (uint8_t l : test.labels) max_label = std::max<int>(max_label, l);
    const int classes = max_label + 1;
    splits.classes = classes;

    // ---- validation: a stratified, fixed draw from the training images
    const std::string vkey = "data.validation_images";
    if (validation_images < classes) {
        throw UserError(config_source, vkey,
                        "expected at least one image per class (>= " + std::to_string(classes) +
                            "), got " + std::to_string(validation_images));
    }
    if (validation_images >= train.count) {
        throw UserError(config_source, vkey,
                        "expected fewer than the " + std::to_string(train.count) +
                            " training images, got " + std::to_string(validation_images));
    }
    std::vector<int64_t> class_count(static_cast<std::size_t>(classes), 0);
    for (uint8_t l : train.labels) ++class_count[l];
    std::vector<int64_t> quota(static_cast<std::size_t>(classes));
    for (int c = 0; c < classes; ++c) {
        quota[c] = validation_images / classes + (c < validation_images % classes ? 1 : 0);
        if (quota[c] >= class_count[c]) {  // keep at least one training image per class
            throw UserError(config_source, vkey,
                            std::to_string(validation_images) + " validation images need " +
                                std::to_string(quota[c]) + " of class " + std::to_string(c) +
                                ", which has only " + std::to_string(class_count[c]) +
                                " training images (at least one must stay for training)");
        }
    }
    Rng split_rng(kImageSplitSeed);
    const std::vector<int32_t> order = permutation(train.count, split_rng);
    std::vector<int32_t> validation;
    std::vector<std::vector<int32_t>> remaining(static_cast<std::size_t>(classes));
    std::vector<int64_t> taken(static_cast<std::size_t>(classes), 0);
    for (int32_t i : order) {
        const int c = train.labels[static_cast<std::size_t>(i)];
        if (taken[c] < quota[c]) {
            ++taken[c];
            validation.push_back(i);
        } else {
            remaining[c].push_back(i);
        }
    }
    std::sort(validation.begin(), validation.end());

    // ---- training: round robin over the classes, so any prefix is class-balanced
    const int64_t available = train.count - validation_images;
    const std::string tkey = "data.train_images";
    if (train_images < 0) {
        throw UserError(
            config_source, tkey,
            "expected 0 (all) or a positive count, got " + std::to_string(train_images));
    }
    if (train_images > 0 && train_images < classes) {
        throw UserError(config_source, tkey,
                        "expected 0 (all) or at least one image per class (>= " +
                            std::to_string(classes) + "), got " + std::to_string(train_images));
    }
    if (train_images > available) {
        throw UserError(config_source, tkey,
                        "expected at most " + std::to_string(available) +
                            " (the training images left after validation), got " +
                            std::to_string(train_images));
    }
    const int64_t keep = train_images == 0 ? available : train_images;
    std::vector<int32_t> kept;
    kept.reserve(static_cast<std::size_t>(keep));
    for (std::size_t round = 0; static_cast<int64_t>(kept.size()) < keep; ++round) {
        for (int c = 0; c < classes && static_cast<int64_t>(kept.size()) < keep; ++c) {
            if (round < remaining[c].size()) kept.push_back(remaining[c][round]);
        }
    }
    std::sort(kept.begin(), kept.end());

    splits.train = gather(train, kept);
    splits.validation = gather(train, validation);
    std::vector<int32_t> all_test(static_cast<std::size_t>(test.count));
    std::iota(all_test.begin(), all_test.end(), 0);
    splits.test = gather(test, all_test);

    // ---- statistics of the kept training pixels, 0..1 scale
    std::array<int64_t, kPixelValues> histogram{};
    for (uint8_t v : splits.train.pixels) ++histogram[v];
    const auto n = static_cast<double>(splits.train.pixels.size());
    double sum = 0, sum_sq = 0;
    for (int v = 0; v < kPixelValues; ++v) {
        const double x = v / static_cast<double>(kPixelMax);
        sum += static_cast<double>(histogram[v]) * x;
        sum_sq += static_cast<double>(histogram[v]) * x * x;
    }
    const double mean = sum / n;
    const double variance = std::max(0.0, sum_sq / n - mean * mean);
    const double std_dev = std::sqrt(variance);
    splits.mean = static_cast<float>(mean);
    splits.std = std_dev > 0 ? static_cast<float>(std_dev) : 1.0f;
    return splits;
}

void normalised_images(const ImageSplits& data, ImageSplitPart which, int64_t first, int64_t count,
                       std::vector<float>& images, std::vector<int32_t>& labels) {
    const ImageSet& set = data.part(which);
    UPCYCLE_ASSERT(first >= 0 && count >= 0 && first + count <= set.count(),
                   "normalised_images: range outside the part");
    const auto size = static_cast<std::size_t>(data.image_size());
    const auto table = normalisation_table(data);
    images.resize(static_cast<std::size_t>(count) * size);
    labels.resize(static_cast<std::size_t>(count));
    const uint8_t* src = set.pixels.data() + static_cast<std::size_t>(first) * size;
    for (std::size_t k = 0; k < images.size(); ++k) images[k] = table[src[k]];
    std::copy_n(set.labels.begin() + first, count, labels.begin());
}

ImageBatchSampler::ImageBatchSampler(const ImageSplits& data, uint64_t seed,
                                     Augmentation augmentation, int crop_padding)
    : data_(data), seed_(seed), augmentation_(augmentation), crop_padding_(crop_padding) {
    UPCYCLE_ASSERT(data.train.count() > 0, "ImageBatchSampler: no training images");
    UPCYCLE_ASSERT(crop_padding >= 0, "ImageBatchSampler: negative crop padding");
}

const std::vector<int32_t>& ImageBatchSampler::epoch_order(int64_t epoch) {
    UPCYCLE_ASSERT(epoch >= 0, "negative epoch");
    if (epoch != cached_epoch_) {
        Rng rng(epoch_seed(seed_, epoch));
        order_ = permutation(data_.train.count(), rng);
        cached_epoch_ = epoch;
    }
    return order_;
}

void ImageBatchSampler::sample_positions(int64_t first, int B, Rng& augment_rng,
                                         std::vector<float>& images, std::vector<int32_t>& labels) {
    UPCYCLE_ASSERT(first >= 0 && B > 0, "sample: negative position or empty batch");
    const int rows = data_.rows, cols = data_.cols;
    const auto size = static_cast<std::size_t>(data_.image_size());
    const int64_t n = data_.train.count();
    const auto table = normalisation_table(data_);
    const float pad_value = table[0];  // a black pixel, normalised
    const uint64_t offsets = 2 * static_cast<uint64_t>(crop_padding_) + 1;
    images.resize(static_cast<std::size_t>(B) * size);
    labels.resize(static_cast<std::size_t>(B));
    for (int b = 0; b < B; ++b) {
        const int64_t position = first + b;
        const int32_t index = epoch_order(position / n)[static_cast<std::size_t>(position % n)];
        const uint8_t* src = data_.train.pixels.data() + static_cast<std::size_t>(index) * size;
        float* dst = images.data() + static_cast<std::size_t>(b) * size;
        labels[static_cast<std::size_t>(b)] = data_.train.labels[static_cast<std::size_t>(index)];
        if (augmentation_ == Augmentation::None) {
            for (std::size_t k = 0; k < size; ++k) dst[k] = table[src[k]];
            continue;
        }
        // out[y][x] = padded[y + dy][x' + dx], x' = x or cols-1-x (flip), padded = src
        // shifted by crop_padding with pad_value outside.
        const int dy = static_cast<int>(augment_rng.below(offsets)) - crop_padding_;
        const int dx = static_cast<int>(augment_rng.below(offsets)) - crop_padding_;
        const bool flip = augment_rng.below(2) == 1;
        for (int y = 0; y < rows; ++y) {
            const int sy = y + dy;
            float* out = dst + static_cast<std::size_t>(y) * cols;
            if (sy < 0 || sy >= rows) {
                std::fill_n(out, cols, pad_value);
                continue;
            }
            const uint8_t* in = src + static_cast<std::size_t>(sy) * cols;
            for (int x = 0; x < cols; ++x) {
                const int sx = (flip ? cols - 1 - x : x) + dx;
                out[x] = (sx < 0 || sx >= cols) ? pad_value : table[in[sx]];
            }
        }
    }
}

}  // namespace upcycle
