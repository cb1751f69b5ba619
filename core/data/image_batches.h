#pragma once
// Image batches for the ViT: a fixed train / validation / test split of an image data set
// (Fashion-MNIST, core/data/fashion_mnist.h), normalisation, epoch sampling and augmentation.
//
// Memory: the splits keep the raw u8 pixels (60k x 28 x 28 = 47 MB for Fashion-MNIST's
// training set, a quarter of what floats would take) and normalise while a batch is filled:
// pixel v -> (v/255 - mean)/std, through a 256-entry table. Only a batch is ever float.
#include <cstdint>
#include <string>
#include <vector>

#include "core/choice.h"
#include "core/rng.h"

namespace upcycle {

struct ImageDataset;  // core/data/fashion_mnist.h

// One part of the splits: raw pixels, labels, and where each image came from.
struct ImageSet {
    std::vector<uint8_t> pixels;   // [N, rows, cols], row-major, raw 0..255
    std::vector<int32_t> labels;   // [N], 0..classes-1
    std::vector<int32_t> sources;  // [N], index of the image in the data set it was taken from
    int64_t count() const { return static_cast<int64_t>(labels.size()); }
};

enum class ImageSplitPart { Train, Validation, Test };

// The images a ViT run trains and evaluates on, already split (normalisation statistics
// computed; applied on the fly).
struct ImageSplits {
    int rows = 0, cols = 0, classes = 0;
    ImageSet train;       // the kept training images, in their original (data set) order
    ImageSet validation;  // held out of the data set's training images, original order
    ImageSet test;        // the data set's test images, all of them, original order
    // Grey images have one channel: mean and standard deviation of the kept training pixels
    // on the 0..1 scale (v/255), applied to every part. std is 1 if the pixels are constant.
    float mean = 0, std = 1;

    const ImageSet& part(ImageSplitPart which) const;
    int64_t image_size() const { return static_cast<int64_t>(rows) * cols; }
    float normalise(uint8_t v) const { return (static_cast<float>(v) / 255.0f - mean) / std; }
};

// The split is fixed: it does not depend on any training seed, so every trial of a sweep sees
// the same one. A permutation of the training images from an Rng with a constant seed; each
// class c sends its first validation_images/classes images in that permutation to validation
// (plus one for the lowest validation_images % classes classes); the validation set keeps its
// original order. The remaining training images, taken round robin over the classes (each
// class in permutation order), make a class-balanced sequence; train_images > 0 keeps its
// first train_images (0 keeps all), stored in original order. mean/std come from the kept
// training images. classes = 1 + the largest label in train or test.
// UserError (file = config_source, key data.validation_images or data.train_images) when
// a number is impossible: negative, fewer than one per class, at least the data set, more
// than a class can give. UserError (key data) when train and test image sizes differ or a
// data set is empty.
ImageSplits make_image_splits(const ImageDataset& train, const ImageDataset& test,
                              int64_t validation_images, int64_t train_images,
                              const std::string& config_source);

// Normalised images [count, rows, cols] and labels [count] of a part, images first..first+count-1
// (evaluation batches, no augmentation).
void normalised_images(const ImageSplits& data, ImageSplitPart which, int64_t first, int64_t count,
                       std::vector<float>& images, std::vector<int32_t>& labels);

// Training batches, deterministic and resumable from the step counter alone.
// Batch `step` holds positions step·B .. step·B+B-1 of an endless stream of epochs; epoch e
// is a permutation of the training images (without replacement: every image once per
// epoch) drawn from Rng(seed mixed with e). The current epoch's permutation is cached, so
// consecutive batches do not recompute it. Augmentation randomness comes from the caller's
// augment_rng (saved in checkpoints); per example, in batch order, crop_flip draws the row
// offset below(2·pad+1), the column offset below(2·pad+1), then the flip below(2); "none"
// draws nothing.
// The sampler holds a reference to `data`, which must outlive it.
class ImageBatchSampler {
public:
    ImageBatchSampler(const ImageSplits& data, uint64_t seed, Augmentation augmentation,
                      int crop_padding);

    // images [B, rows, cols] normalised (and augmented), labels [B]: the batch of step
    // `step`, i.e. positions step·B .. step·B+B-1 of the concatenated epoch orders.
    void sample(int64_t step, int B, Rng& augment_rng, std::vector<float>& images,
                std::vector<int32_t>& labels) {
        sample_positions(step * B, B, augment_rng, images, labels);
    }
    // `count` examples from position `first` on (a micro-batch: a slice of a step's batch).
    void sample_positions(int64_t first, int count, Rng& augment_rng, std::vector<float>& images,
                          std::vector<int32_t>& labels);

    // Epoch e's order: indices into data.train, a permutation of 0..N-1.
    const std::vector<int32_t>& epoch_order(int64_t epoch);

private:
    const ImageSplits& data_;
    uint64_t seed_;
    Augmentation augmentation_;
    int crop_padding_;
    int64_t cached_epoch_ = -1;
    std::vector<int32_t> order_;  // permutation of epoch cached_epoch_
};

}  // namespace upcycle
