// Image batches: the fixed stratified split, normalisation, epoch sampling, augmentation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/data/fashion_mnist.h"
#include "core/data/image_batches.h"
#include "core/errors.h"
#include "test_support.h"

namespace upcycle {
namespace {

constexpr int kRows = 6, kCols = 6, kClasses = 3, kTrain = 200, kTest = 30;
const std::string kSource = "sweep.yaml";

// Pixel 0 of image i is i (so an image can be identified); the rest vary with i and position,
// with no mirror symmetry. Label i % 3: class counts 67, 67, 66.
ImageDataset synthetic_images(int count, int offset) {
    ImageDataset d;
    d.count = count;
    d.rows = kRows;
    d.cols = kCols;
    d.pixels.resize(static_cast<std::size_t>(count) * kRows * kCols);
    d.labels.resize(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        for (int k = 0; k < kRows * kCols; ++k) {
            d.pixels[static_cast<std::size_t>(i) * kRows * kCols + k] =
                static_cast<uint8_t>(k == 0 ? i : (i * 31 + k * 17 + offset) % 256);
        }
        d.labels[static_cast<std::size_t>(i)] = static_cast<uint8_t>(i % kClasses);
    }
    return d;
}

struct Fixture {
    ImageDataset train = synthetic_images(kTrain, 0);
    ImageDataset test = synthetic_images(kTest, 5);
};

std::map<int, int> class_counts(const ImageSet& set) {
    std::map<int, int> counts;
    for (int32_t l : set.labels) ++counts[l];
    return counts;
}

// The image an (un-augmented) normalised batch row came from: pixel 0 encodes its index.
int source_of(const ImageSplits& s, const float* image) {
    return static_cast<int>(std::lround((image[0] * s.std + s.mean) * 255.0f));
}

template <typename F>
UserError user_error_of(F&& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e;
    }
    ADD_FAILURE() << "expected a UserError";
    return UserError("", "", "");
}

// ---- the split ----------------------------------------------------------------------------------

TEST(ImageSplits, ValidationIsStratifiedDisjointAndOrdered) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 31, 0, kSource);
    EXPECT_EQ(s.rows, kRows);
    EXPECT_EQ(s.cols, kCols);
    EXPECT_EQ(s.classes, kClasses);
    ASSERT_EQ(s.validation.count(), 31);
    EXPECT_EQ(s.train.count(), kTrain - 31);
    EXPECT_EQ(s.test.count(), kTest);
    // 31 = 10·3 + 1: the remainder goes to the lowest class
    EXPECT_EQ(class_counts(s.validation), (std::map<int, int>{{0, 11}, {1, 10}, {2, 10}}));
    EXPECT_TRUE(std::is_sorted(s.validation.sources.begin(), s.validation.sources.end()));
    EXPECT_TRUE(std::is_sorted(s.train.sources.begin(), s.train.sources.end()));

    std::set<int32_t> all(s.train.sources.begin(), s.train.sources.end());
    for (int32_t v : s.validation.sources) EXPECT_EQ(all.count(v), 0u) << "image " << v;
    all.insert(s.validation.sources.begin(), s.validation.sources.end());
    EXPECT_EQ(all.size(), static_cast<std::size_t>(kTrain));  // a partition

    // not just the first images: the draw is a permutation
    std::vector<int32_t> first(31);
    std::iota(first.begin(), first.end(), 0);
    EXPECT_NE(s.validation.sources, first);

    // contents follow the sources
    const std::size_t size = kRows * kCols;
    for (const ImageSet* set : {&s.train, &s.validation}) {
        for (int64_t k = 0; k < set->count(); ++k) {
            const auto i = static_cast<std::size_t>(set->sources[k]);
            EXPECT_EQ(set->labels[k], f.train.labels[i]);
            EXPECT_TRUE(std::equal(set->pixels.begin() + k * size,
                                   set->pixels.begin() + (k + 1) * size,
                                   f.train.pixels.begin() + i * size));
        }
    }
    EXPECT_EQ(s.test.pixels, f.test.pixels);
    for (int i = 0; i < kTest; ++i) EXPECT_EQ(s.test.labels[i], f.test.labels[i]);
}

TEST(ImageSplits, SplitDoesNotDependOnTheTrainingSeed) {
    Fixture f;
    const ImageSplits a = make_image_splits(f.train, f.test, 30, 0, kSource);
    // training samplers with other seeds run in between: the split has no seed to change
    ImageBatchSampler sampler(a, 12345, Augmentation::CropFlip, 2);
    Rng augment(7);
    std::vector<float> images;
    std::vector<int32_t> labels;
    sampler.sample(3, 8, augment, images, labels);
    const ImageSplits b = make_image_splits(f.train, f.test, 30, 0, "other.yaml");
    EXPECT_EQ(a.validation.sources, b.validation.sources);
    EXPECT_EQ(a.train.sources, b.train.sources);
    // the same validation set whatever subset of training images is kept
    const ImageSplits c = make_image_splits(f.train, f.test, 30, 60, kSource);
    EXPECT_EQ(a.validation.sources, c.validation.sources);
}

TEST(ImageSplits, TrainSubsetIsClassBalancedAndNested) {
    Fixture f;
    const ImageSplits full = make_image_splits(f.train, f.test, 30, 0, kSource);
    const ImageSplits s30 = make_image_splits(f.train, f.test, 30, 30, kSource);
    const ImageSplits s31 = make_image_splits(f.train, f.test, 30, 31, kSource);
    const ImageSplits s90 = make_image_splits(f.train, f.test, 30, 90, kSource);
    EXPECT_EQ(s30.train.count(), 30);
    EXPECT_EQ(class_counts(s30.train), (std::map<int, int>{{0, 10}, {1, 10}, {2, 10}}));
    EXPECT_EQ(class_counts(s31.train), (std::map<int, int>{{0, 11}, {1, 10}, {2, 10}}));
    EXPECT_EQ(class_counts(s90.train), (std::map<int, int>{{0, 30}, {1, 30}, {2, 30}}));
    const std::set<int32_t> all(full.train.sources.begin(), full.train.sources.end());
    const std::set<int32_t> big(s90.train.sources.begin(), s90.train.sources.end());
    for (int32_t i : s30.train.sources) {
        EXPECT_EQ(all.count(i), 1u);
        EXPECT_EQ(big.count(i), 1u);  // a smaller subset is a prefix of a larger one
    }
    // the subset is spread over the permutation, not the first images of each class
    EXPECT_GT(*std::max_element(s30.train.sources.begin(), s30.train.sources.end()), 60);
}

TEST(ImageSplits, NormalisedTrainPixelsHaveZeroMeanUnitStd) {
    Fixture f;
    for (int64_t keep : {int64_t{0}, int64_t{45}}) {
        const ImageSplits s = make_image_splits(f.train, f.test, 30, keep, kSource);
        // mean / std on the 0..1 scale, of the kept training pixels
        double sum = 0, sum_sq = 0;
        for (uint8_t v : s.train.pixels) sum += v / 255.0;
        const double n = static_cast<double>(s.train.pixels.size());
        const double mean = sum / n;
        for (uint8_t v : s.train.pixels) sum_sq += (v / 255.0 - mean) * (v / 255.0 - mean);
        EXPECT_NEAR(s.mean, mean, 1e-6);
        EXPECT_NEAR(s.std, std::sqrt(sum_sq / n), 1e-6);

        std::vector<float> images;
        std::vector<int32_t> labels;
        normalised_images(s, ImageSplitPart::Train, 0, s.train.count(), images, labels);
        ASSERT_EQ(images.size(), s.train.pixels.size());
        EXPECT_EQ(labels, s.train.labels);
        double m = 0, q = 0;
        for (float x : images) m += x;
        m /= static_cast<double>(images.size());
        for (float x : images) q += (x - m) * (x - m);
        EXPECT_NEAR(m, 0.0, 1e-5);
        EXPECT_NEAR(std::sqrt(q / static_cast<double>(images.size())), 1.0, 1e-5);
    }
}

TEST(ImageSplits, NormalisedImagesOfAnyPart) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    std::vector<float> images;
    std::vector<int32_t> labels;
    normalised_images(s, ImageSplitPart::Test, 4, 7, images, labels);
    ASSERT_EQ(images.size(), 7u * kRows * kCols);
    ASSERT_EQ(labels.size(), 7u);
    for (int k = 0; k < 7; ++k) {
        EXPECT_EQ(labels[k], f.test.labels[4 + k]);
        for (int p = 0; p < kRows * kCols; ++p) {
            const uint8_t v = f.test.pixels[static_cast<std::size_t>(4 + k) * kRows * kCols + p];
            EXPECT_FLOAT_EQ(images[static_cast<std::size_t>(k) * kRows * kCols + p],
                            (v / 255.0f - s.mean) / s.std);
        }
    }
    normalised_images(s, ImageSplitPart::Validation, 0, s.validation.count(), images, labels);
    EXPECT_EQ(labels, s.validation.labels);
}

TEST(ImageSplits, ImpossibleNumbersNameTheKey) {
    Fixture f;
    auto expect_key = [&](int64_t validation, int64_t train, const std::string& key) {
        const UserError e =
            user_error_of([&] { make_image_splits(f.train, f.test, validation, train, kSource); });
        EXPECT_EQ(e.key(), key) << validation << " " << train;
        EXPECT_EQ(e.file(), kSource);
        EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    };
    const std::string v = "data.validation_images", t = "data.train_images";
    expect_key(-1, 0, v);
    expect_key(0, 0, v);
    expect_key(2, 0, v);    // fewer than one per class
    expect_key(200, 0, v);  // the whole data set
    expect_key(500, 0, v);
    expect_key(199, 0, v);  // class 0 would give all its 67 images
    expect_key(30, -1, t);
    expect_key(30, 2, t);    // fewer than one per class
    expect_key(30, 171, t);  // only 170 left after validation
    EXPECT_NO_THROW(make_image_splits(f.train, f.test, 30, 170, kSource));

    const UserError e =
        user_error_of([&] { parse_choice<Augmentation>("mixup", kSource, "data.augment"); });
    EXPECT_EQ(e.key(), "data.augment");
    EXPECT_EQ(e.file(), kSource);
    EXPECT_EQ(parse_choice<Augmentation>("none", kSource, "data.augment"), Augmentation::None);
    EXPECT_EQ(parse_choice<Augmentation>("crop_flip", kSource, "data.augment"),
              Augmentation::CropFlip);

    ImageDataset odd = synthetic_images(kTest, 0);
    odd.rows = 4;
    odd.cols = 9;
    EXPECT_EQ(user_error_of([&] { make_image_splits(f.train, odd, 30, 0, kSource); }).key(),
              "data");
}

// ---- epoch sampling -----------------------------------------------------------------------------

TEST(ImageBatchSampler, EveryTrainingImageOncePerEpoch) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 31, 0, kSource);  // 169 images
    const int64_t n = s.train.count();
    const int B = 10;  // does not divide 169: batches straddle epochs
    ImageBatchSampler sampler(s, 1, Augmentation::None, 0);
    Rng augment(0);
    std::vector<float> images;
    std::vector<int32_t> labels;
    std::vector<int> seen;  // sources in stream order
    const std::size_t size = kRows * kCols;
    for (int64_t step = 0; step * B < 3 * n; ++step) {
        sampler.sample(step, B, augment, images, labels);
        for (int b = 0; b < B; ++b) {
            const int source = source_of(s, images.data() + b * size);
            ASSERT_GE(source, 0);
            ASSERT_LT(source, kTrain);
            EXPECT_EQ(labels[b], source % kClasses);
            seen.push_back(source);
        }
    }
    const std::set<int32_t> train(s.train.sources.begin(), s.train.sources.end());
    for (int e = 0; e < 3; ++e) {
        std::vector<int> epoch(seen.begin() + e * n, seen.begin() + (e + 1) * n);
        std::vector<int> sorted = epoch;
        std::sort(sorted.begin(), sorted.end());
        EXPECT_EQ(std::vector<int>(train.begin(), train.end()), sorted) << "epoch " << e;
        if (e > 0) {
            EXPECT_NE(epoch, std::vector<int>(seen.begin() + (e - 1) * n, seen.begin() + e * n))
                << "epochs " << e - 1 << " and " << e << " have the same order";
        }
    }
}

TEST(ImageBatchSampler, BatchDependsOnlyOnStepAndSeed) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    const int B = 16;
    std::vector<float> images, fresh_images;
    std::vector<int32_t> labels, fresh_labels;
    for (Augmentation aug : {Augmentation::None, Augmentation::CropFlip}) {
        ImageBatchSampler running(s, 42, aug, 2);
        Rng augment(99);
        Rng::State before_last{};
        const int64_t last = 23;  // several epochs in (170 images, 16 per batch)
        for (int64_t step = 0; step <= last; ++step) {
            before_last = augment.state();
            running.sample(step, B, augment, images, labels);
        }
        // a fresh sampler, resumed from the step counter and the saved augmentation state
        ImageBatchSampler resumed(s, 42, aug, 2);
        Rng augment_resumed(0);
        augment_resumed.set_state(before_last);
        resumed.sample(last, B, augment_resumed, fresh_images, fresh_labels);
        EXPECT_EQ(images, fresh_images);
        EXPECT_EQ(labels, fresh_labels);
        EXPECT_EQ(augment.state(), augment_resumed.state());
    }
}

TEST(ImageBatchSampler, SeedsGiveDifferentOrders) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    ImageBatchSampler a(s, 1, Augmentation::None, 0), a2(s, 1, Augmentation::None, 0),
        b(s, 2, Augmentation::None, 0);
    const std::vector<int32_t> order_a = a.epoch_order(0);
    EXPECT_EQ(order_a, a2.epoch_order(0));
    EXPECT_NE(order_a, b.epoch_order(0));
    EXPECT_NE(order_a, a.epoch_order(1));
    std::vector<int32_t> identity(order_a.size());
    std::iota(identity.begin(), identity.end(), 0);
    EXPECT_NE(order_a, identity);
    std::vector<int32_t> sorted = order_a;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, identity);
}

// ---- augmentation -------------------------------------------------------------------------------

TEST(ImageBatchSampler, NoAugmentationGivesTheNormalisedOriginals) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    ImageBatchSampler sampler(s, 5, Augmentation::None, 4);
    Rng augment(3);
    const Rng::State state = augment.state();
    std::vector<float> images, expected;
    std::vector<int32_t> labels, expected_labels;
    const int B = 12;
    sampler.sample(2, B, augment, images, labels);
    EXPECT_EQ(augment.state(), state);  // nothing drawn
    const std::vector<int32_t> order = sampler.epoch_order(0);
    const std::size_t size = kRows * kCols;
    for (int b = 0; b < B; ++b) {
        normalised_images(s, ImageSplitPart::Train, order[2 * B + b], 1, expected, expected_labels);
        EXPECT_TRUE(std::equal(expected.begin(), expected.end(), images.begin() + b * size));
        EXPECT_EQ(labels[b], expected_labels[0]);
    }
}

// What crop_flip must give, built the long way: an explicit padded canvas, a window, a mirror.
std::vector<float> expected_crop_flip(const ImageSplits& s, int64_t index, int pad, int oy, int ox,
                                      bool flip) {
    const int h = s.rows + 2 * pad, w = s.cols + 2 * pad;
    std::vector<float> canvas(static_cast<std::size_t>(h) * w, (0.0f - s.mean) / s.std);
    for (int y = 0; y < s.rows; ++y) {
        for (int x = 0; x < s.cols; ++x) {
            canvas[static_cast<std::size_t>(y + pad) * w + x + pad] = s.normalise(
                s.train.pixels[static_cast<std::size_t>(index) * s.rows * s.cols + y * s.cols + x]);
        }
    }
    std::vector<float> out(static_cast<std::size_t>(s.rows) * s.cols);
    for (int y = 0; y < s.rows; ++y) {
        for (int x = 0; x < s.cols; ++x) {
            const int cx = flip ? s.cols - 1 - x : x;
            out[static_cast<std::size_t>(y) * s.cols + x] =
                canvas[static_cast<std::size_t>(y + oy) * w + cx + ox];
        }
    }
    return out;
}

TEST(ImageBatchSampler, CropFlipIsAShiftedPaddedWindowAndAnExactMirror) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    ASSERT_NE((0.0f - s.mean) / s.std, 0.0f);
    const int pad = 2, B = 64;
    ImageBatchSampler sampler(s, 8, Augmentation::CropFlip, pad);
    Rng augment(11);
    Rng replay = augment;
    std::vector<float> images;
    std::vector<int32_t> labels;
    sampler.sample(1, B, augment, images, labels);
    const std::vector<int32_t> order = sampler.epoch_order(0);
    const std::size_t size = kRows * kCols;
    int flips = 0, shifted = 0, padded = 0;
    for (int b = 0; b < B; ++b) {
        const int oy = static_cast<int>(replay.below(2 * pad + 1));
        const int ox = static_cast<int>(replay.below(2 * pad + 1));
        const bool flip = replay.below(2) == 1;
        flips += flip;
        shifted += (oy != pad || ox != pad);
        padded += (oy != pad);
        const int32_t index = order[B + b];
        EXPECT_EQ(labels[b], s.train.labels[index]);
        const std::vector<float> want = expected_crop_flip(s, index, pad, oy, ox, flip);
        EXPECT_TRUE(std::equal(want.begin(), want.end(), images.begin() + b * size))
            << "example " << b << " offset " << oy << "," << ox << " flip " << flip;
        if (oy < pad) {  // the top rows come from the padding: all black
            for (int x = 0; x < kCols; ++x)
                EXPECT_EQ(images[b * size + x], (0.0f - s.mean) / s.std);
        }
    }
    EXPECT_EQ(replay.state(), augment.state());  // three draws per example, nothing else
    EXPECT_GT(flips, 0);
    EXPECT_LT(flips, B);
    EXPECT_GT(shifted, 0);
    EXPECT_GT(padded, 0);
}

TEST(ImageBatchSampler, FlipWithoutPaddingIsIdentityOrMirror) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    const int B = 32;
    ImageBatchSampler plain(s, 4, Augmentation::None, 0),
        augmented(s, 4, Augmentation::CropFlip, 0);
    Rng r0(1), r1(2);
    std::vector<float> original, images;
    std::vector<int32_t> labels0, labels1;
    plain.sample(0, B, r0, original, labels0);
    augmented.sample(0, B, r1, images, labels1);
    EXPECT_EQ(labels0, labels1);
    int mirrored = 0, same = 0;
    for (int b = 0; b < B; ++b) {
        bool is_same = true, is_mirror = true;
        for (int y = 0; y < kRows; ++y) {
            for (int x = 0; x < kCols; ++x) {
                const float got = images[(b * kRows + y) * kCols + x];
                is_same &= got == original[(b * kRows + y) * kCols + x];
                is_mirror &= got == original[(b * kRows + y) * kCols + (kCols - 1 - x)];
            }
        }
        EXPECT_TRUE(is_same != is_mirror) << "example " << b;  // the images have no symmetry
        mirrored += is_mirror;
        same += is_same;
    }
    EXPECT_GT(mirrored, 0);
    EXPECT_GT(same, 0);
}

TEST(ImageBatchSampler, SameAugmentStateSameBatch) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    ImageBatchSampler a(s, 3, Augmentation::CropFlip, 3), b(s, 3, Augmentation::CropFlip, 3);
    Rng ra(77), rb(77), rc(78);
    std::vector<float> ia, ib, ic;
    std::vector<int32_t> la, lb, lc;
    a.sample(5, 20, ra, ia, la);
    b.sample(5, 20, rb, ib, lb);
    EXPECT_EQ(ia, ib);
    EXPECT_EQ(la, lb);
    b.sample(5, 20, rc, ic, lc);
    EXPECT_EQ(la, lc);  // the same images...
    EXPECT_NE(ia, ic);  // ...augmented differently
}

// Gradient accumulation draws a step's batch in micro-batches: the parts, in order, are the
// batch (the same images, augmented by the same draws), also across an epoch boundary.
TEST(ImageBatchSampler, MicroBatchesInOrderAreTheBatch) {
    Fixture f;
    const ImageSplits s = make_image_splits(f.train, f.test, 30, 0, kSource);
    ImageBatchSampler whole(s, 3, Augmentation::CropFlip, 2),
        parts(s, 3, Augmentation::CropFlip, 2);
    const int B = 24, micro = 6;
    for (const int64_t step : {0, 7}) {  // step 7 spans an epoch boundary
        Rng whole_rng(5 + step), parts_rng(5 + step);
        std::vector<float> images, part_images, joined_images;
        std::vector<int32_t> labels, part_labels, joined_labels;
        whole.sample(step, B, whole_rng, images, labels);
        for (int part = 0; part < B / micro; ++part) {
            parts.sample_positions(step * B + part * micro, micro, parts_rng, part_images,
                                   part_labels);
            joined_images.insert(joined_images.end(), part_images.begin(), part_images.end());
            joined_labels.insert(joined_labels.end(), part_labels.begin(), part_labels.end());
        }
        EXPECT_EQ(joined_images, images) << "step " << step;
        EXPECT_EQ(joined_labels, labels) << "step " << step;
    }
}

// ---- the real data set ----------------------------------------------------------------------

TEST(ImageSplits, FashionMnist) {
    const std::filesystem::path dir = fashion_mnist_dir();
    if (!testing::have_fashion_mnist()) {
        GTEST_SKIP() << "Fashion-MNIST not installed at " << dir << " (dataset-fashion-mnist)";
    }
    const ImageDataset train = load_fashion_mnist(FashionMnistSplit::Train, dir);
    const ImageDataset test = load_fashion_mnist(FashionMnistSplit::Test, dir);
    const ImageSplits s = make_image_splits(train, test, 5000, 0, kSource);
    EXPECT_EQ(s.rows, 28);
    EXPECT_EQ(s.cols, 28);
    EXPECT_EQ(s.classes, kFashionMnistClasses);
    EXPECT_EQ(s.train.count(), 55000);
    EXPECT_EQ(s.validation.count(), 5000);
    EXPECT_EQ(s.test.count(), 10000);
    for (const auto& [label, count] : class_counts(s.validation)) EXPECT_EQ(count, 500) << label;
    for (const auto& [label, count] : class_counts(s.train)) EXPECT_EQ(count, 5500) << label;
    EXPECT_GT(s.mean, 0.2f);  // ≈ 0.286
    EXPECT_LT(s.mean, 0.4f);
    EXPECT_GT(s.std, 0.25f);  // ≈ 0.353
    EXPECT_LT(s.std, 0.45f);

    ImageBatchSampler sampler(s, 0, Augmentation::CropFlip, 4);
    Rng augment(0);
    std::vector<float> images;
    std::vector<int32_t> labels;
    sampler.sample(0, 128, augment, images, labels);
    EXPECT_EQ(images.size(), 128u * 28 * 28);
    for (int32_t l : labels) {
        EXPECT_GE(l, 0);
        EXPECT_LT(l, kFashionMnistClasses);
    }
}

}  // namespace
}  // namespace upcycle
