// The communicator seam: one process is the 1-rank case, whose collectives leave buffers bit
// for bit as they were, and the trainer reduces the gradients once per optimizer step,
// between the backward passes and the optimizer (which then steps on the reduced mean).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/comm.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/train.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle {
namespace {

using testing::TempDir;
using testing::tiny_synthetic_config;

std::vector<uint32_t> bits_of(const std::vector<float>& values) {
    std::vector<uint32_t> bits;
    for (const float v : values) bits.push_back(std::bit_cast<uint32_t>(v));
    return bits;
}

TEST(LocalCommunicator, IsRankZeroOfOne) {
    LocalCommunicator comm;
    EXPECT_EQ(comm.rank(), 0);
    EXPECT_EQ(comm.size(), 1);
    comm.barrier();  // returns: there is no other rank to wait for
    // the process-wide one, and what a training run uses by default
    EXPECT_EQ(&local_communicator(), &local_communicator());
    EXPECT_EQ(local_communicator().size(), 1);
    EXPECT_EQ(TrainOptions{}.communicator, &local_communicator());
}

// Values an arithmetic "reduction" over one rank would change: −0 (+0 added gives +0), a
// subnormal (flushed to zero by FTZ arithmetic), a signalling NaN (quieted by any arithmetic).
TEST(LocalCommunicator, AllReduceLeavesTheBufferBitIdentical) {
    CpuBackend backend;
    const float signalling_nan = std::bit_cast<float>(uint32_t{0x7F800001});
    const std::vector<float> values = {1.0f / 3.0f,
                                       -0.0f,
                                       std::numeric_limits<float>::denorm_min(),
                                       std::numeric_limits<float>::max(),
                                       -std::numeric_limits<float>::infinity(),
                                       signalling_nan,
                                       -1e-30f,
                                       12345.678f};
    for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
        Tensor buffer = Tensor::from_host(backend, {2, 4}, values);
        local_communicator().all_reduce(buffer, op);
        EXPECT_EQ(bits_of(buffer.to_host()), bits_of(values))
            << (op == ReduceOp::Sum ? "sum" : "average");
        local_communicator().all_reduce_gradients(buffer);
        EXPECT_EQ(bits_of(buffer.to_host()), bits_of(values)) << "gradients";
    }
}

// Rank 0 of a pretend 2-rank job whose other rank's gradients are all zero: the mean over the
// ranks is half of this rank's gradients. Counts the reductions and what they were given.
class HalvingCommunicator final : public Communicator {
public:
    explicit HalvingCommunicator(Backend& backend) : backend_(&backend) {}
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void all_reduce(float* data, std::size_t count, ReduceOp op) override {
        ++reductions;
        elements = static_cast<int64_t>(count);
        if (op == ReduceOp::Average) backend_->scale(data, 0.5f, count);
    }
    void all_reduce_host(double* values, std::size_t n, ReduceOp op) override {
        if (op == ReduceOp::Average) {
            for (std::size_t i = 0; i < n; ++i) values[i] *= 0.5;
        }
    }
    // Not used by a data-parallel training step.
    void reduce_scatter(const float*, float*, std::size_t, ReduceOp) override { unused(); }
    void all_gather(const float*, float*, std::size_t) override { unused(); }
    void broadcast(float*, std::size_t, int) override { unused(); }
    void all_to_all_v(const float*, std::span<const int64_t>, float*,
                      std::span<const int64_t>) override {
        unused();
    }
    // both ranks start from the same point
    void all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) override {
        std::copy(values, values + n, recv);
        std::copy(values, values + n, recv + n);
    }
    void broadcast_host(std::vector<uint8_t>&, int) override { unused(); }
    void barrier() override {}
    using Communicator::all_reduce;
    int reductions = 0;
    int64_t elements = 0;

private:
    static void unused() { FAIL() << "a collective training does not need was called"; }
    Backend* backend_;
};

// Rank 0 of 2 takes the first half of every batch: with micro-batches of 4 (two a step), it
// runs one backward pass a step, on the batch's first 4 windows, which are the whole first
// batch of a 1-rank run with batch_size 4 (the same data stream, drawn in the same order).
TEST(TrainWithCommunicator, ReducesTheGradientsOncePerStepBeforeTheOptimizer) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 3;
    config.train.micro_batch = config.train.batch_size / 2;
    auto first_grad_norm = [&](const RunConfig& run, Communicator& comm, int* steps_logged) {
        TempDir dir;
        TrainOptions options;
        options.out_dir = dir.path();
        options.communicator = &comm;
        double grad_norm = -1;
        TrainObserver observer;
        observer.on_step = [&](const StepRecord& r) {
            if (r.step == 1) grad_norm = r.grad_norm;
            ++*steps_logged;
        };
        EXPECT_TRUE(train(backend, run, options, observer).completed);
        return grad_norm;
    };
    RunConfig first_half = config;
    first_half.train.batch_size = config.train.micro_batch;
    first_half.train.micro_batch = 0;
    int local_steps = 0, halved_steps = 0;
    const double local = first_grad_norm(first_half, local_communicator(), &local_steps);
    HalvingCommunicator halving(backend);
    const double halved = first_grad_norm(config, halving, &halved_steps);

    EXPECT_EQ(halving.reductions, 3);  // one per optimizer step, not one per micro-batch
    EXPECT_EQ(halving.elements, parameter_count(config.model));
    ASSERT_GT(local, 0);
    // the optimizer's gradient norm is the reduced one (the mean with the other rank's zeros),
    // of this rank's slice of the batch: after its backward and before the update
    EXPECT_DOUBLE_EQ(halved, local / 2);
    EXPECT_EQ(local_steps, 3);
    EXPECT_EQ(halved_steps, 3);
}

// Sets environment variables for one test and restores what was there.
class ScopedEnvironment {
public:
    void set(const char* name, const char* value) {
        const char* old = std::getenv(name);
        saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
        ::setenv(name, value, 1);
    }
    ~ScopedEnvironment() {
        for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
            if (it->second) {
                ::setenv(it->first.c_str(), it->second->c_str(), 1);
            } else {
                ::unsetenv(it->first.c_str());
            }
        }
    }

private:
    std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

constexpr const char* kLauncherVariables[] = {"OMPI_COMM_WORLD_RANK",
                                              "OMPI_COMM_WORLD_SIZE",
                                              "OMPI_COMM_WORLD_LOCAL_RANK",
                                              "SLURM_PROCID",
                                              "SLURM_STEP_NUM_TASKS",
                                              "SLURM_LOCALID",
                                              "SLURM_NTASKS",
                                              "RANK",
                                              "WORLD_SIZE",
                                              "LOCAL_RANK"};

TEST(LaunchEnvironment, ReadsEachLauncherInOrderOfPrecedence) {
    ScopedEnvironment env;
    for (const char* name : kLauncherVariables) env.set(name, "");
    EXPECT_EQ(launch_environment().size, 1);
    EXPECT_EQ(launch_environment().launcher, "none");

    // an sbatch script's own process: its allocation's task count, but no job step
    env.set("SLURM_NTASKS", "4");
    env.set("SLURM_PROCID", "0");
    EXPECT_EQ(launch_environment().size, 1);

    env.set("RANK", "1");
    env.set("WORLD_SIZE", "3");
    env.set("LOCAL_RANK", "1");
    LaunchEnvironment launch = launch_environment();
    EXPECT_EQ(launch.launcher, "env");
    EXPECT_EQ(launch.rank, 1);
    EXPECT_EQ(launch.size, 3);
    EXPECT_EQ(launch.local_rank, 1);

    env.set("SLURM_PROCID", "2");
    env.set("SLURM_STEP_NUM_TASKS", "4");
    env.set("SLURM_LOCALID", "0");
    launch = launch_environment();
    EXPECT_EQ(launch.launcher, "srun");
    EXPECT_EQ(launch.rank, 2);
    EXPECT_EQ(launch.size, 4);
    EXPECT_EQ(launch.local_rank, 0);

    env.set("OMPI_COMM_WORLD_RANK", "0");
    env.set("OMPI_COMM_WORLD_SIZE", "2");
    launch = launch_environment();
    EXPECT_EQ(launch.launcher, "mpirun");
    EXPECT_EQ(launch.size, 2);
    EXPECT_EQ(launch.local_rank, 0);  // not set: rank 0 of the node
}

TEST(LaunchEnvironment, RefusesVariablesThatDescribeNoRank) {
    ScopedEnvironment env;
    for (const char* name : kLauncherVariables) env.set(name, "");
    env.set("RANK", "2");
    env.set("WORLD_SIZE", "2");
    EXPECT_THROW(launch_environment(), UserError);
    env.set("RANK", "one");
    try {
        launch_environment();
        ADD_FAILURE() << "a rank that is not a number was taken";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "RANK");
        EXPECT_NE(std::string(e.what()).find("one"), std::string::npos) << e.what();
    }
}

TEST(LocalCommunicator, CollectivesOfOneRankCopyTheirInput) {
    LocalCommunicator comm;
    const std::vector<float> send = {1, 2, 3};
    std::vector<float> recv(3, 0);
    comm.reduce_scatter(send.data(), recv.data(), 3, ReduceOp::Average);
    EXPECT_EQ(recv, send);
    std::fill(recv.begin(), recv.end(), 0.0f);
    comm.all_gather(send.data(), recv.data(), 3);
    EXPECT_EQ(recv, send);
    std::fill(recv.begin(), recv.end(), 0.0f);
    const std::vector<int64_t> counts = {3};
    EXPECT_EQ(comm.exchange_counts(counts), counts);
    comm.all_to_all_v(send.data(), counts, recv.data(), counts);
    EXPECT_EQ(recv, send);
}

}  // namespace
}  // namespace upcycle
