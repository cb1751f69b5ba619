// The MPI communicator's collectives, run by real ranks: ctest starts this binary under
// `mpirun -np 2` and `-np 4` (CMakeLists.txt, "MPI tests"). Every rank runs every test; the
// values each rank contributes are functions of its rank, so each rank can compute what every
// collective must give it.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "core/comm.h"
#include "kernels/comm/mpi_communicator.h"
#include "kernels/comm_factory.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {
namespace {

MpiCommunicator& world() {
    static MpiCommunicator comm(/*collective_timeout_seconds=*/120);
    return comm;
}

// Rank r's i-th value: distinct per rank and index, exact in float.
float value(int r, std::size_t i) { return static_cast<float>(1000 * (r + 1) + i); }

TEST(MpiCommunicator, AgreesWithTheLaunchEnvironment) {
    const LaunchEnvironment launch = launch_environment();
    EXPECT_EQ(launch.launcher, "mpirun");
    EXPECT_EQ(world().rank(), launch.rank);
    EXPECT_EQ(world().size(), launch.size);
    EXPECT_GE(world().size(), 2);
    CpuBackend backend;
    const auto comm = make_communicator(backend, launch);
    EXPECT_EQ(comm->name(), "mpi");
    EXPECT_EQ(comm->rank(), launch.rank);
}

TEST(MpiCommunicator, AllReduceSumsAndAverages) {
    const int n = world().size();
    const std::size_t count = 37;
    for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
        std::vector<float> data(count);
        for (std::size_t i = 0; i < count; ++i) data[i] = value(world().rank(), i);
        world().all_reduce(data.data(), count, op);
        for (std::size_t i = 0; i < count; ++i) {
            float sum = 0;
            for (int r = 0; r < n; ++r) sum += value(r, i);
            EXPECT_FLOAT_EQ(data[i], op == ReduceOp::Sum ? sum : sum / static_cast<float>(n)) << i;
        }
    }
}

TEST(MpiCommunicator, ReduceScatterGivesEachRankItsShardOfTheSum) {
    const int n = world().size();
    const std::size_t count = 5;
    std::vector<float> send(count * static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < send.size(); ++i) send[i] = value(world().rank(), i);
    std::vector<float> recv(count, -1);
    world().reduce_scatter(send.data(), recv.data(), count, ReduceOp::Average);
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t global = static_cast<std::size_t>(world().rank()) * count + i;
        float sum = 0;
        for (int r = 0; r < n; ++r) sum += value(r, global);
        EXPECT_FLOAT_EQ(recv[i], sum / static_cast<float>(n)) << i;
    }
}

TEST(MpiCommunicator, AllGatherPlacesEveryRankInOrderAlsoInPlace) {
    const int n = world().size();
    const std::size_t count = 3;
    std::vector<float> send(count);
    for (std::size_t i = 0; i < count; ++i) send[i] = value(world().rank(), i);
    std::vector<float> recv(count * static_cast<std::size_t>(n), -1);
    world().all_gather(send.data(), recv.data(), count);
    std::vector<float> in_place(recv.size(), -1);
    std::copy(send.begin(), send.end(),
              in_place.begin() + static_cast<std::ptrdiff_t>(count) * world().rank());
    world().all_gather(in_place.data() + count * static_cast<std::size_t>(world().rank()),
                       in_place.data(), count);
    for (int r = 0; r < n; ++r) {
        for (std::size_t i = 0; i < count; ++i) {
            EXPECT_EQ(recv[static_cast<std::size_t>(r) * count + i], value(r, i));
            EXPECT_EQ(in_place[static_cast<std::size_t>(r) * count + i], value(r, i));
        }
    }
}

TEST(MpiCommunicator, BroadcastCopiesTheRootsBuffers) {
    const int root = world().size() - 1;
    std::vector<float> data = {value(world().rank(), 0), value(world().rank(), 1)};
    world().broadcast(data.data(), data.size(), root);
    EXPECT_EQ(data, (std::vector<float>{value(root, 0), value(root, 1)}));
    std::vector<uint8_t> bytes;
    if (world().rank() == root) bytes = {1, 2, 3, 250};
    world().broadcast_host(bytes, root);
    EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3, 250}));
}

// Rank s sends (s + d) % 3 rows of 2 floats to rank d: uneven counts, some zero.
TEST(MpiCommunicator, AllToAllVMovesUnevenAndEmptyPieces) {
    const int n = world().size();
    const int me = world().rank();
    auto rows = [](int s, int d) { return static_cast<int64_t>((s + d) % 3); };
    constexpr int64_t kWidth = 2;
    std::vector<int64_t> send_counts(static_cast<std::size_t>(n));
    std::vector<float> send;
    for (int d = 0; d < n; ++d) {
        send_counts[static_cast<std::size_t>(d)] = rows(me, d) * kWidth;
        for (int64_t k = 0; k < rows(me, d) * kWidth; ++k) {
            send.push_back(static_cast<float>(100 * me + 10 * d + k));
        }
    }
    const std::vector<int64_t> recv_counts = world().exchange_counts(send_counts);
    ASSERT_EQ(recv_counts.size(), static_cast<std::size_t>(n));
    std::vector<float> expected;
    for (int s = 0; s < n; ++s) {
        EXPECT_EQ(recv_counts[static_cast<std::size_t>(s)], rows(s, me) * kWidth) << s;
        for (int64_t k = 0; k < rows(s, me) * kWidth; ++k) {
            expected.push_back(static_cast<float>(100 * s + 10 * me + k));
        }
    }
    std::vector<float> recv(expected.size(), -1);
    world().all_to_all_v(send.data(), send_counts, recv.data(), recv_counts);
    EXPECT_EQ(recv, expected);
}

TEST(MpiCommunicator, HostReductionsAndGathers) {
    const int n = world().size();
    double values[2] = {1.0 * world().rank(), 0.5};
    world().all_reduce_host(values, 2, ReduceOp::Sum);
    EXPECT_DOUBLE_EQ(values[0], n * (n - 1) / 2.0);
    EXPECT_DOUBLE_EQ(values[1], 0.5 * n);
    const int64_t mine[2] = {world().rank(), -world().rank()};
    std::vector<int64_t> all(2 * static_cast<std::size_t>(n));
    world().all_gather_host(mine, all.data(), 2);
    for (int r = 0; r < n; ++r) {
        EXPECT_EQ(all[2 * static_cast<std::size_t>(r)], r);
        EXPECT_EQ(all[2 * static_cast<std::size_t>(r) + 1], -r);
    }
    world().barrier();
}

}  // namespace
}  // namespace upcycle
