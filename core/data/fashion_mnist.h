#pragma once
// Fashion-MNIST (Zalando, MIT licence), from the Debian package dataset-fashion-mnist:
// IDX files, gzipped, under /usr/share/datasets/fashion-mnist (override the directory with
// the environment variable UPCYCLE_FASHION_MNIST_DIR):
//   train-images-idx3-ubyte.gz  60000 x 28 x 28 u8    train-labels-idx1-ubyte.gz  60000 u8
//   t10k-images-idx3-ubyte.gz   10000 x 28 x 28 u8    t10k-labels-idx1-ubyte.gz   10000 u8
// Labels 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
// Ankle boot); every class has 6000 train and 1000 test images.
//
// IDX: big-endian magic 0x00 0x00 <type> <ndims>, then ndims big-endian u32 dims, then the
// data row-major. Only type 0x08 (unsigned byte) is read: magic 0x00000803 for images,
// 0x00000801 for labels.
#include <cstdint>
#include <filesystem>
#include <vector>

namespace upcycle {

struct ImageDataset {
    int count = 0, rows = 0, cols = 0;
    std::vector<uint8_t> pixels;  // [count, rows, cols], row-major
    std::vector<uint8_t> labels;  // [count], 0..9
};

enum class FashionMnistSplit { Train, Test };

inline constexpr int kFashionMnistClasses = 10;

// $UPCYCLE_FASHION_MNIST_DIR if set and non-empty, else /usr/share/datasets/fashion-mnist.
std::filesystem::path fashion_mnist_dir();

// Reads the split's images and labels; each file may be gzipped ("<name>.gz", preferred) or
// plain ("<name>"). UserError naming the file on a missing directory or file (install the
// Debian package dataset-fashion-mnist), bad magic, wrong type, truncation, image count !=
// label count, or a label outside 0..9.
ImageDataset load_fashion_mnist(FashionMnistSplit split,
                                const std::filesystem::path& dir = fashion_mnist_dir());

// Reads one gzipped or plain IDX file of unsigned bytes; dims_out receives its dims (1..4 of
// them). UserError naming the file on any malformed input.
std::vector<uint8_t> read_idx_file(const std::filesystem::path& path, std::vector<int>& dims_out);

}  // namespace upcycle
