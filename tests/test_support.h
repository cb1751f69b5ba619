#pragma once
// Shared helpers for the test suite.
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data/fashion_mnist.h"
#include "core/rng.h"
#include "core/train.h"
#include "kernels/backend_factory.h"

namespace upcycle::testing {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        std::random_device rd;
        path_ = std::filesystem::temp_directory_path() /
                ("upcycle_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
        std::filesystem::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

// What a command printed (stdout and stderr together) and its exit code: -1 if it could not
// run (or UPCYCLE_BIN is unset).
struct CliResult {
    int exit_code = -1;
    std::string output;
};

// Runs a shell command line; its stdout and stderr together.
inline CliResult run_shell(const std::string& command_line) {
    CliResult r;
    FILE* pipe = popen((command_line + " 2>&1").c_str(), "r");
    if (!pipe) return r;
    char buffer[4096];
    std::size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) r.output.append(buffer, n);
    const int status = pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

// The same behind a command prefix (e.g. one that drops privileges).
inline CliResult run_cli_with_prefix(const std::string& prefix, const std::string& args) {
    const char* bin = std::getenv("UPCYCLE_BIN");
    if (!bin) return {-1, "UPCYCLE_BIN is not set (run the tests through ctest)"};
    return run_shell((prefix.empty() ? "" : prefix + " ") + bin + " " + args);
}

// Runs the `upcycle` binary that ctest names in UPCYCLE_BIN with these arguments.
inline CliResult run_cli(const std::string& args) { return run_cli_with_prefix("", args); }

// A sweep named "tiny" of every method on a tiny GPT and synthetic text: a pretraining of
// pretrain_steps (checkpoints every 20) and its four continuations to budgets 50% and 100%.
inline std::string tiny_sweep_yaml(int pretrain_steps) {
    return R"(name: tiny
model: {vocab_size: 256, context: 16, channels: 32, layers: 2, heads: 2}
data: {source: synthetic, synthetic_bytes: 65536}
train: {batch_size: 8, lr: 0.003, warmup_steps: 5, log_every: 10}
eval: {every: 0, max_windows: 16}
checkpoint: {every: 20}
pretrain: {steps: )" +
           std::to_string(pretrain_steps) + R"(}
continue:
  budgets: [50, 100]
  methods:
    dense: {}
    upcycle: {experts: 4, k: 2}
    scratch: {}
    warmstart: {depth_multiplier: 2}
)";
}

// A tiny GPT on synthetic Markov text: trains in well under a second per few dozen steps.
inline RunConfig tiny_synthetic_config() {
    RunConfig c;
    c.name = "tiny";
    c.model = ModelConfig{Arch::Gpt, 256, 16, 32, 2, 2, {}};
    c.data.source = DataSource::Synthetic;
    c.data.synthetic_bytes = 1 << 16;
    c.train.batch_size = 8;
    c.train.steps = 20;
    c.train.lr = 3e-3;
    c.train.warmup_steps = 5;
    c.train.log_every = 1;
    c.eval.every = 10;
    c.eval.max_windows = 32;
    c.checkpoint.every = 0;
    c.checkpoint.every_seconds = 0;
    return c;
}

// A small ViT (patch 7: 16 patches + the class token) on a class-balanced 2000-image subset:
// learns Fashion-MNIST in a few hundred steps on the CPU.
inline RunConfig small_vit_config() {
    RunConfig c;
    c.name = "vit-small";
    c.model = ModelConfig{
        .arch = Arch::Vit, .channels = 32, .layers = 2, .heads = 2, .moe = {}, .patch = 7};
    c.data.source = DataSource::FashionMnist;
    c.data.train_images = 2000;
    c.data.validation_images = 500;
    c.train.batch_size = 32;
    c.train.steps = 500;
    c.train.schedule = Schedule::Rsqrt;
    c.train.lr = 5e-3;
    c.train.warmup_steps = 20;
    c.train.log_every = 50;
    c.eval.every = 0;  // only the final (full) evaluation
    c.eval.max_images = 500;
    c.eval.probe_shots = "1,10";
    c.eval.probe_seeds = 2;
    c.checkpoint.every = 0;
    c.checkpoint.every_seconds = 0;
    return c;
}

// Random token ids and targets for a GPT: [B·T] each, uniform over the vocabulary.
struct TextBatch {
    std::vector<int32_t> inputs, targets;
};
inline TextBatch random_text_batch(int B, int T, int V, uint64_t seed) {
    Rng rng(seed);
    TextBatch b;
    for (int i = 0; i < B * T; ++i) {
        b.inputs.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(V))));
        b.targets.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(V))));
    }
    return b;
}

// Whether the four Fashion-MNIST files (gzipped or plain) are installed where the loader looks
// (the Debian package dataset-fashion-mnist; tests that need them skip otherwise).
inline bool have_fashion_mnist() {
    const auto dir = fashion_mnist_dir();
    for (const std::string name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
        if (!std::filesystem::exists(dir / (name + ".gz")) &&
            !std::filesystem::exists(dir / name)) {
            return false;
        }
    }
    return true;
}

// The CUDA backend, or null with the reason in `why` (a build without CUDA, no device):
// GPU tests call it in SetUp and GTEST_SKIP with the reason.
inline std::unique_ptr<Backend> cuda_backend_or_null(std::string& why) {
    try {
        return make_backend("cuda");
    } catch (const std::exception& e) {
        why = e.what();
        return nullptr;
    }
}

// One run of `config` straight through in straight_dir, and one in resumed_dir stopped (as by
// Ctrl-C) right after step `stop_step` and then run again to resume. The caller compares them.
struct StraightAndResumedRuns {
    TrainSummary straight, partial, resumed;
};
inline StraightAndResumedRuns train_straight_and_resumed(Backend& backend, const RunConfig& config,
                                                         int64_t stop_step,
                                                         const std::filesystem::path& straight_dir,
                                                         const std::filesystem::path& resumed_dir) {
    StraightAndResumedRuns runs;
    TrainOptions straight;
    straight.out_dir = straight_dir;
    runs.straight = train(backend, config, straight);

    std::atomic<bool> stop{false};
    TrainObserver observer;
    observer.on_step = [&](const StepRecord& r) {
        if (r.step == stop_step) stop = true;
    };
    TrainOptions first;
    first.out_dir = resumed_dir;
    first.stop_requested = &stop;
    runs.partial = train(backend, config, first, observer);

    TrainOptions second;
    second.out_dir = resumed_dir;
    runs.resumed = train(backend, config, second);
    return runs;
}

// The two directories' final checkpoints hold the same tensors (weights and optimizer
// moments) bit for bit, and the same data-stream state.
inline void expect_checkpoints_bit_identical(const std::filesystem::path& dir_a,
                                             const std::filesystem::path& dir_b) {
    const auto ca = read_checkpoint(checkpoint_path(dir_a));
    const auto cb = read_checkpoint(checkpoint_path(dir_b));
    EXPECT_EQ(ca.state.step, cb.state.step);
    ASSERT_EQ(ca.file.order, cb.file.order);
    for (const auto& name : ca.file.order) {
        EXPECT_EQ(ca.file.tensors.at(name).data, cb.file.tensors.at(name).data) << name;
    }
    EXPECT_EQ(ca.state.data_rng, cb.state.data_rng);
    EXPECT_EQ(ca.optimizer_step, cb.optimizer_step);
}

}  // namespace upcycle::testing
