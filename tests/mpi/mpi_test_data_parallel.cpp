// Data-parallel training, run by real ranks: ctest starts this binary under `mpirun -np 2` and
// `-np 4` (CMakeLists.txt, "MPI tests"). Every rank runs every test. What N ranks compute is
// compared with what one process computes on its own (each rank, or rank 0, runs that
// reference itself with the 1-rank local communicator):
//   - the gradients of a step: N ranks with B/N examples each = one process on the whole
//     batch (dense) or accumulating the same micro-batches (MoE: routing, capacity and aux
//     losses are per micro-batch);
//   - a short training run's losses and parameters = one process with train.micro_batch set to
//     the ranks' micro-batch; evaluations = one process's, bit for bit;
//   - ZeRO-1 = plain all-reduce; checkpoints move between 1 and N ranks.
// Tolerances: the reduction over ranks adds the ranks' gradients in another order than one
// process's accumulation, so gradients agree to a relative 1e-5 (float rounding is ~1e-7);
// after a few AdamW steps parameters agree to 1e-4 absolute (an update is ~lr = 3e-3 per
// element, a difference of rounding in the gradients moves it by far less).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/data_parallel.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/optim/data_parallel_adamw.h"
#include "core/task/task.h"
#include "core/train.h"
#include "core/train_log.h"
#include "kernels/comm/mpi_communicator.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;
using testing::tiny_synthetic_config;

MpiCommunicator& world() {
    static MpiCommunicator comm(/*collective_timeout_seconds=*/120);
    return comm;
}
bool lead() { return world().rank() == 0; }

// A directory every rank sees: rank 0 makes it, the others get its path. Removed (by rank 0)
// once every rank is done with it.
class SharedTempDir {
public:
    SharedTempDir() {
        std::vector<uint8_t> bytes;
        if (lead()) {
            dir_.emplace();
            const std::string path = dir_->path().string();
            bytes.assign(path.begin(), path.end());
        }
        world().broadcast_host(bytes, 0);
        path_ = std::string(bytes.begin(), bytes.end());
    }
    ~SharedTempDir() { world().barrier(); }
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::optional<TempDir> dir_;
    std::filesystem::path path_;
};

// A batch of 8 splits over 2 and 4 ranks into micro-batches of 2 (2 or 1 per rank).
RunConfig dense_config() {
    RunConfig c = tiny_synthetic_config();
    c.train.batch_size = 8;
    c.train.micro_batch = 2;
    c.train.steps = 6;
    c.train.log_every = 1;
    c.eval.every = 3;
    c.eval.max_windows = 37;  // 19 chunks of 2: the last round of ranks is partial
    return c;
}

// Top-2 of 4 experts in every other block, a capacity small enough to drop tokens, and the
// load-balancing and z losses on.
RunConfig moe_config() {
    RunConfig c = dense_config();
    c.model.moe.experts = 4;
    c.model.moe.k = 2;
    c.model.moe.capacity_factor = 1.0;
    c.model.moe.aux_loss_coef = 0.01;
    c.model.moe.z_loss_coef = 0.001;
    return c;
}

struct StepGradients {
    std::vector<float> gradients;  // the mean gradient of the whole batch
    double loss_sum = 0;
    int64_t tokens = 0;
    Rng::State data_rng{};  // the data stream after the step
};

// Step 0 of `config` on `ranks`: each rank its slice, the gradients averaged over the ranks.
StepGradients first_step_gradients(const RunConfig& config, Communicator& ranks) {
    CpuBackend backend;
    const BatchSplit split = split_batch(config.train, ranks.size(), "test");
    const auto task = make_training_task(backend, rank_task_config(config, split), "test");
    task->model().init_weights(config.train.seed);
    Rng data_rng = data_stream(config.train.seed);
    ForwardStats stats = forward_backward_slice(*task, 0, split, ranks.rank(), data_rng);
    Tensor& gradients = task->model().gradients();
    ranks.all_reduce_gradients(gradients);
    double sums[2] = {stats.loss_sum, static_cast<double>(stats.tokens)};
    ranks.all_reduce_host(sums, 2, ReduceOp::Sum);
    StepGradients out;
    out.gradients = gradients.to_host();
    for (float& g : out.gradients) g /= static_cast<float>(split.parts_per_rank);
    out.loss_sum = sums[0];
    out.tokens = static_cast<int64_t>(sums[1]);
    out.data_rng = data_rng.state();
    return out;
}

// ‖a − b‖ ≤ relative·‖b‖ and max |a − b| ≤ relative·max |b|.
void expect_close(const std::vector<float>& a, const std::vector<float>& b, double relative,
                  const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    double diff2 = 0, norm2 = 0, max_diff = 0, max_b = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double d = static_cast<double>(a[i]) - b[i];
        diff2 += d * d;
        norm2 += static_cast<double>(b[i]) * b[i];
        max_diff = std::max(max_diff, std::abs(d));
        max_b = std::max(max_b, std::abs(static_cast<double>(b[i])));
    }
    ASSERT_GT(norm2, 0) << what;
    EXPECT_LE(std::sqrt(diff2), relative * std::sqrt(norm2)) << what;
    EXPECT_LE(max_diff, relative * max_b) << what;
}

void expect_same_gradients_as_one_process(const RunConfig& config, const RunConfig& one_process) {
    const StepGradients ranks = first_step_gradients(config, world());
    const StepGradients alone = first_step_gradients(one_process, local_communicator());
    expect_close(ranks.gradients, alone.gradients, 1e-5, "gradients");
    EXPECT_EQ(ranks.tokens, alone.tokens);
    EXPECT_NEAR(ranks.loss_sum, alone.loss_sum, 1e-6 * alone.loss_sum);
    // every rank drew the whole batch: the data stream is where one process's is
    EXPECT_EQ(ranks.data_rng, alone.data_rng);
}

TEST(DataParallel, DenseGradientsEqualOneProcessOnTheWholeBatch) {
    RunConfig config = dense_config();
    config.train.micro_batch = 0;  // one pass of B/N per rank
    RunConfig whole = config;      // one pass of B
    expect_same_gradients_as_one_process(config, whole);
}

TEST(DataParallel, MoeGradientsEqualOneProcessAccumulatingTheSameMicroBatches) {
    RunConfig config = moe_config();
    config.train.micro_batch = 0;  // one pass of B/N per rank
    RunConfig accumulating = config;
    accumulating.train.micro_batch = config.train.batch_size / world().size();
    expect_same_gradients_as_one_process(config, accumulating);
    // with micro-batches on the ranks too
    expect_same_gradients_as_one_process(moe_config(), moe_config());
}

struct TrainedRun {
    std::vector<double> losses;      // per step
    std::vector<double> grad_norms;  // per step
    std::vector<double> eval_losses;
    TrainSummary summary;
};

// Trains `config` into dir on `ranks`; with stop_at > 0 a stop is requested on rank 0 only
// (as a signal would reach one rank) after that step.
TrainedRun train_on(const RunConfig& config, Communicator& ranks, const std::filesystem::path& dir,
                    int64_t stop_at = 0) {
    CpuBackend backend;
    TrainedRun run;
    std::atomic<bool> stop{false};
    TrainObserver observer;
    observer.on_step = [&](const StepRecord& r) {
        run.losses.push_back(r.loss);
        run.grad_norms.push_back(r.grad_norm);
        if (r.step == stop_at) stop = true;
    };
    observer.on_eval = [&](const EvalRecord& r) { run.eval_losses.push_back(r.result.loss); };
    TrainOptions options;
    options.out_dir = dir;
    options.communicator = &ranks;
    options.stop_requested = &stop;
    run.summary = train(backend, config, options, observer);
    return run;
}

void expect_curves_close(const std::vector<double>& a, const std::vector<double>& b,
                         double relative, const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (std::size_t i = 0; i < a.size(); ++i) {
        EXPECT_NEAR(a[i], b[i], relative * std::abs(b[i])) << what << " " << i;
    }
}

std::vector<float> checkpoint_tensors(const std::filesystem::path& dir, const std::string& prefix,
                                      const std::vector<ParamInfo>& layout) {
    const Checkpoint ckpt = read_checkpoint(checkpoint_path(dir));
    std::vector<float> flat;
    for (const auto& info : layout) {
        const auto& data = ckpt.file.tensors.at(prefix + info.name).data;
        flat.insert(flat.end(), data.begin(), data.end());
    }
    return flat;
}

// max |a − b| ≤ tolerance
void expect_within(const std::vector<float>& a, const std::vector<float>& b, double tolerance,
                   const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    double max_diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
    }
    EXPECT_LE(max_diff, tolerance) << what;
}

constexpr double kParameterTolerance = 1e-4;

void expect_same_checkpoint_weights(const std::filesystem::path& a, const std::filesystem::path& b,
                                    const RunConfig& config) {
    const auto layout = parameter_layout(config.model);
    expect_within(checkpoint_tensors(a, "", layout), checkpoint_tensors(b, "", layout),
                  kParameterTolerance, "parameters");
    const Checkpoint ca = read_checkpoint(checkpoint_path(a));
    const Checkpoint cb = read_checkpoint(checkpoint_path(b));
    EXPECT_EQ(ca.state.step, cb.state.step);
    EXPECT_EQ(ca.state.tokens, cb.state.tokens);
    EXPECT_EQ(ca.state.data_rng, cb.state.data_rng);  // the same data, to the bit
    EXPECT_EQ(ca.optimizer_step, cb.optimizer_step);
}

// A hash of the bits of a float buffer.
int64_t fingerprint(const std::vector<float>& values) {
    uint64_t h = 1469598103934665603ULL;
    for (const float v : values) {
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof(bits));
        h = (h ^ bits) * 1099511628211ULL;
    }
    return static_cast<int64_t>(h);
}

// Every rank holds the same parameters, to the bit.
void expect_same_on_every_rank(const std::vector<float>& values) {
    const int64_t mine = fingerprint(values);
    std::vector<int64_t> all(static_cast<std::size_t>(world().size()));
    world().all_gather_host(&mine, all.data(), 1);
    for (std::size_t r = 0; r < all.size(); ++r) EXPECT_EQ(all[r], all[0]) << "rank " << r;
}

TEST(DataParallel, TrainingFollowsOneProcessAccumulatingTheSameMicroBatches) {
    for (const RunConfig& config : {dense_config(), moe_config()}) {
        SharedTempDir dir;
        const TrainedRun ranks = train_on(config, world(), dir / "ranks");
        ASSERT_TRUE(ranks.summary.completed);
        // the final evaluation, the same on every rank
        const double final_loss = ranks.summary.final_eval->loss;
        double mean = final_loss;
        world().all_reduce_host(&mean, 1, ReduceOp::Average);
        EXPECT_EQ(mean, final_loss);
        CpuBackend backend;
        {
            const auto task = make_training_task(backend, config, "test");
            load_into(read_checkpoint(checkpoint_path(dir / "ranks")), task->model(), nullptr);
            expect_same_on_every_rank(task->model().parameters().to_host());
        }
        if (lead()) {
            const TrainedRun alone = train_on(config, local_communicator(), dir / "alone");
            ASSERT_EQ(ranks.losses.size(), 6u);  // only rank 0 reports
            expect_curves_close(ranks.losses, alone.losses, 1e-5, "loss");
            expect_curves_close(ranks.grad_norms, alone.grad_norms, 1e-4, "grad_norm");
            expect_curves_close(ranks.eval_losses, alone.eval_losses, 1e-4, "val_loss");
            expect_same_checkpoint_weights(dir / "ranks", dir / "alone", config);
            // one log, written once (by rank 0)
            const auto log = read_train_log(log_path(dir / "ranks"), 1000);
            EXPECT_EQ(log.steps.size(), 6u);
            EXPECT_EQ(log.evals.size(), 2u);
        } else {
            EXPECT_TRUE(ranks.losses.empty());  // the observer is rank 0's
        }
    }
}

// The ranks share the windows; every rank gets one process's result, to the bit.
TEST(DataParallel, EvaluationIsOneProcessesToTheBit) {
    CpuBackend backend;
    for (RunConfig config : {dense_config(), moe_config()}) {
        config.eval.max_windows = 0;  // every validation window: many chunks, a partial round
        const BatchSplit split = split_batch(config.train, world().size(), "test");
        const auto task = make_training_task(backend, rank_task_config(config, split), "test");
        task->model().init_weights(7);
        const EvalResult shared = task->evaluate(EvalScope::Full, world());
        const EvalResult alone = task->evaluate(EvalScope::Full, local_communicator());
        EXPECT_EQ(shared.loss, alone.loss);
        EXPECT_EQ(shared.accuracy, alone.accuracy);
        EXPECT_EQ(shared.tokens, alone.tokens);
        EXPECT_EQ(shared.windows, alone.windows);
        EXPECT_GT(alone.windows, 4 * task->model().max_batch());
    }
}

TEST(DataParallel, EvaluationOfAVitWithItsProbeIsOneProcessesToTheBit) {
    if (!testing::have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST is not installed";
    CpuBackend backend;
    RunConfig config = testing::small_vit_config();
    config.train.batch_size = 256;  // evaluation batches of 256/N: the test split in many
    config.eval.max_images = 300;
    const BatchSplit split = split_batch(config.train, world().size(), "test");
    const auto task = make_training_task(backend, rank_task_config(config, split), "test");
    task->model().init_weights(7);
    const EvalResult shared = task->evaluate(EvalScope::Full, world());
    const EvalResult alone = task->evaluate(EvalScope::Full, local_communicator());
    EXPECT_EQ(shared.loss, alone.loss);
    EXPECT_EQ(shared.accuracy, alone.accuracy);
    EXPECT_EQ(shared.tokens, alone.tokens);
    ASSERT_EQ(shared.extra.size(), alone.extra.size());
    for (const auto& [key, value] : alone.extra) EXPECT_EQ(shared.extra.at(key), value) << key;
}

TEST(DataParallel, ZeroOneEqualsPlainAllReduce) {
    RunConfig plain = dense_config();
    plain.train.grad_clip = 0.5;     // clipped: the global norm over the shards matters
    plain.train.weight_decay = 0.5;  // decay per element: matrices only, across shard edges
    RunConfig zero = plain;
    zero.train.zero_stage = 1;
    SharedTempDir dir;
    const TrainedRun a = train_on(plain, world(), dir / "plain");
    const TrainedRun b = train_on(zero, world(), dir / "zero");
    if (lead()) {
        expect_curves_close(b.losses, a.losses, 1e-5, "loss");
        expect_curves_close(b.grad_norms, a.grad_norms, 1e-5, "grad_norm");
        const auto layout = parameter_layout(plain.model);
        expect_within(checkpoint_tensors(dir / "zero", "", layout),
                      checkpoint_tensors(dir / "plain", "", layout), 1e-5, "parameters");
        for (const char* moment : {kOptimizerExpAvgPrefix, kOptimizerExpAvgSqPrefix}) {
            expect_close(checkpoint_tensors(dir / "zero", moment, layout),
                         checkpoint_tensors(dir / "plain", moment, layout), 1e-4, moment);
        }
    }
    // the moments were sharded: each rank held a 1/N share
    CpuBackend backend;
    const std::size_t n = static_cast<std::size_t>(parameter_count(plain.model));
    DataParallelAdamW sharded(backend, world(), n, 1);
    EXPECT_EQ(static_cast<std::size_t>(sharded.adamw().exp_avg().numel()),
              (n + world().size() - 1) / world().size());
}

// A checkpoint written by N ranks resumes on one process, and one process's on N ranks; both
// continue the same data and end where an uninterrupted run does.
TEST(DataParallel, CheckpointsMoveBetweenOneAndManyRanks) {
    for (const int zero_stage : {0, 1}) {
        RunConfig config = moe_config();
        config.train.zero_stage = zero_stage;
        SharedTempDir dir;
        // N ranks, stopped after step 3 by a request that reaches rank 0 only
        const TrainedRun first = train_on(config, world(), dir / "many_to_one", /*stop_at=*/3);
        EXPECT_FALSE(first.summary.completed);
        EXPECT_EQ(first.summary.steps, 3);  // on every rank
        if (lead()) {
            const TrainedRun rest = train_on(config, local_communicator(), dir / "many_to_one");
            EXPECT_TRUE(rest.summary.resumed);
            EXPECT_EQ(rest.summary.resumed_from_step, 3);
            const TrainedRun straight = train_on(config, local_communicator(), dir / "straight");
            expect_same_checkpoint_weights(dir / "many_to_one", dir / "straight", config);
            // one process, stopped after step 3, for the ranks to resume
            train_on(config, local_communicator(), dir / "one_to_many", /*stop_at=*/3);
        }
        world().barrier();
        const TrainedRun rest = train_on(config, world(), dir / "one_to_many");
        EXPECT_TRUE(rest.summary.resumed);
        EXPECT_EQ(rest.summary.state.step, 6);
        world().barrier();
        if (lead()) expect_same_checkpoint_weights(dir / "one_to_many", dir / "straight", config);
    }
}

TEST(DataParallel, ABatchThatDoesNotSplitOverTheRanksIsRefused) {
    RunConfig config = dense_config();
    config.train.batch_size = 2 * world().size() + 1;
    config.train.micro_batch = 0;
    SharedTempDir dir;
    try {
        train_on(config, world(), dir / "run");
        ADD_FAILURE() << "a batch of " << config.train.batch_size << " was split over "
                      << world().size() << " ranks";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "train.batch_size");
    }
}

}  // namespace
}  // namespace upcycle
