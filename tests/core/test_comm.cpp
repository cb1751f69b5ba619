// The communicator seam: one process is the 1-rank case, whose collectives leave buffers bit
// for bit as they were, and the trainer reduces the gradients once per optimizer step,
// between the backward passes and the optimizer (which then steps on the reduced mean).
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/comm.h"
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
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void all_reduce(Tensor& buffer, ReduceOp op) override {
        ++reductions;
        elements = buffer.numel();
        if (op == ReduceOp::Average) {
            buffer.backend().scale(buffer.f32(), 0.5f, static_cast<std::size_t>(buffer.numel()));
        }
    }
    void barrier() override {}
    int reductions = 0;
    int64_t elements = 0;
};

TEST(TrainWithCommunicator, ReducesTheGradientsOncePerStepBeforeTheOptimizer) {
    CpuBackend backend;
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 3;
    config.train.micro_batch = config.train.batch_size / 2;  // two backward passes a step
    auto first_grad_norm = [&](Communicator& comm, int* steps_logged) {
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
        EXPECT_TRUE(train(backend, config, options, observer).completed);
        return grad_norm;
    };
    int local_steps = 0, halved_steps = 0;
    const double local = first_grad_norm(local_communicator(), &local_steps);
    HalvingCommunicator halving;
    const double halved = first_grad_norm(halving, &halved_steps);

    EXPECT_EQ(halving.reductions, 3);  // one per optimizer step, not one per micro-batch
    EXPECT_EQ(halving.elements, parameter_count(config.model));
    ASSERT_GT(local, 0);
    // the optimizer's gradient norm is the reduced one: after the last backward (which would
    // overwrite or add to a reduction made before it) and before the update
    EXPECT_DOUBLE_EQ(halved, local / 2);
    EXPECT_EQ(local_steps, 3);
    EXPECT_EQ(halved_steps, 3);
}

}  // namespace
}  // namespace upcycle
