// The NCCL communicator on one GPU (the lent machine has one H200): every collective of a
// 1-rank job leaves device buffers as the 1-rank contract says (core/comm.h), the host calls
// round-trip through the device, and a training run whose gradients go through NCCL follows
// the same run through the local communicator. Multi-GPU behaviour needs a multi-GPU machine.
//
// Compiled in every build; without a CUDA build or a GPU every test reports SKIPPED.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/tensor.h"
#include "core/train.h"
#include "cpu_and_cuda_fixture.h"
#include "test_support.h"
#ifdef UPCYCLE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_communicator.h"
#endif

namespace upcycle {
namespace {

#ifdef UPCYCLE_WITH_CUDA

using testing::TempDir;
using testing::tiny_synthetic_config;

constexpr double kTimeoutSeconds = 60;

class NcclOneRank : public testing::CpuAndCuda {
protected:
    CudaBackend& gpu() { return dynamic_cast<CudaBackend&>(*cuda_); }
    std::vector<float> values(std::size_t n) const {
        std::vector<float> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = 0.25f * static_cast<float>(i) - 3.0f;
        return v;
    }
};

TEST_F(NcclOneRank, CollectivesKeepOrCopyTheRanksOwnBuffers) {
    NcclCommunicator comm(gpu(), LaunchEnvironment{0, 1, 0, "none"}, nullptr, kTimeoutSeconds);
    EXPECT_EQ(comm.name(), "nccl");
    EXPECT_EQ(comm.size(), 1);
    const std::vector<float> input = values(1000);
    for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
        Tensor buffer = Tensor::from_host(*cuda_, {1000}, input);
        comm.all_reduce(buffer, op);
        EXPECT_EQ(buffer.to_host(), input);
    }
    Tensor send = Tensor::from_host(*cuda_, {1000}, input);
    Tensor recv = Tensor::zeros(*cuda_, {1000});
    comm.reduce_scatter(send.f32(), recv.f32(), 1000, ReduceOp::Average);
    EXPECT_EQ(recv.to_host(), input);
    recv.set_zero();
    comm.all_gather(send.f32(), recv.f32(), 1000);
    EXPECT_EQ(recv.to_host(), input);
    comm.broadcast(send.f32(), 1000, 0);
    EXPECT_EQ(send.to_host(), input);
    recv.set_zero();
    const std::vector<int64_t> counts = {1000};
    EXPECT_EQ(comm.exchange_counts(counts), counts);
    comm.all_to_all_v(send.f32(), counts, recv.f32(), counts);
    EXPECT_EQ(recv.to_host(), input);

    double host[3] = {1.5, -2.0, 1e300};
    comm.all_reduce_host(host, 3, ReduceOp::Sum);
    EXPECT_EQ(host[0], 1.5);
    EXPECT_EQ(host[2], 1e300);  // doubles travel as doubles
    const int64_t mine[2] = {int64_t{1} << 40, -7};
    int64_t all[2] = {0, 0};
    comm.all_gather_host(mine, all, 2);
    EXPECT_EQ(all[0], mine[0]);
    EXPECT_EQ(all[1], mine[1]);
    std::vector<uint8_t> bytes = {9, 8, 7};
    comm.broadcast_host(bytes, 0);
    EXPECT_EQ(bytes, (std::vector<uint8_t>{9, 8, 7}));
    comm.barrier();
}

TEST_F(NcclOneRank, TrainingThroughNcclFollowsTheLocalCommunicator) {
    RunConfig config = tiny_synthetic_config();
    config.train.steps = 10;
    config.train.log_every = 1;
    auto losses = [&](Communicator& comm) {
        TempDir dir;
        TrainOptions options;
        options.out_dir = dir.path();
        options.communicator = &comm;
        std::vector<double> out;
        TrainObserver observer;
        observer.on_step = [&](const StepRecord& r) { out.push_back(r.loss); };
        EXPECT_TRUE(train(*cuda_, config, options, observer).completed);
        return out;
    };
    LocalCommunicator local(cuda_.get());
    NcclCommunicator nccl(gpu(), LaunchEnvironment{0, 1, 0, "none"}, nullptr, kTimeoutSeconds);
    const std::vector<double> a = losses(local);
    const std::vector<double> b = losses(nccl);
    ASSERT_EQ(a.size(), 10u);
    ASSERT_EQ(b.size(), a.size());
    double largest = 0;
    for (std::size_t i = 0; i < a.size(); ++i) largest = std::max(largest, std::abs(a[i] - b[i]));
    std::printf("largest loss difference, NCCL vs local, 10 steps: %.3g\n", largest);
    // one rank's NCCL average is its own gradient: the runs may differ only if NCCL's
    // division by 1 rounds, which it must not
    EXPECT_LE(largest, 1e-6);
}

#else

TEST(NcclOneRank, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA: no NCCL"; }

#endif

}  // namespace
}  // namespace upcycle
