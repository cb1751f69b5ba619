// The TCP rendezvous that hands NCCL's unique id from rank 0 to the other ranks of a job not
// launched by mpirun: ranks as threads of this process on the loopback interface.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <stdexcept>
#include <vector>

#include "core/errors.h"
#include "core/parallel/tcp_bootstrap.h"

namespace upcycle {
namespace {

// A port nothing listens on now (bound to 0, read back, released).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    socklen_t length = sizeof(address);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

TEST(TcpBootstrap, EveryRankGetsRankZerosBytesWhoeverStartsFirst) {
    const TcpRendezvous at{"127.0.0.1", free_port()};
    const std::vector<uint8_t> id = {7, 0, 255, 1, 2, 3, 128, 42};
    constexpr int kRanks = 4;
    // the other ranks start before rank 0 listens: they retry until it is up
    std::vector<std::future<std::vector<uint8_t>>> others;
    for (int rank = 1; rank < kRanks; ++rank) {
        others.push_back(std::async(std::launch::async, [&at, rank] {
            return tcp_broadcast_from_rank0(at, rank, kRanks, {}, 30);
        }));
    }
    EXPECT_EQ(tcp_broadcast_from_rank0(at, 0, kRanks, id, 30), id);
    for (auto& other : others) EXPECT_EQ(other.get(), id);
}

TEST(TcpBootstrap, ARankWithoutRankZeroTimesOutNamingTheAddress) {
    const TcpRendezvous at{"127.0.0.1", free_port()};
    try {
        tcp_broadcast_from_rank0(at, 1, 2, {}, 0.3);
        FAIL() << "returned without rank 0";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(at.port)),
                  std::string::npos)
            << e.what();
    }
}

TEST(TcpBootstrap, RankZeroAloneTimesOutWaitingForTheOthers) {
    const TcpRendezvous at{"127.0.0.1", free_port()};
    EXPECT_THROW(tcp_broadcast_from_rank0(at, 0, 2, {1}, 0.3), std::runtime_error);
}

TEST(TcpBootstrap, ReadsTheAddressFromTheEnvironmentOrSaysWhatIsMissing) {
    ::unsetenv("MASTER_ADDR");
    ::setenv("MASTER_PORT", "29500", 1);
    try {
        TcpRendezvous::from_environment();
        FAIL() << "accepted without MASTER_ADDR";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "MASTER_ADDR");
    }
    ::setenv("MASTER_ADDR", "node7", 1);
    ::setenv("MASTER_PORT", "http", 1);
    try {
        TcpRendezvous::from_environment();
        FAIL() << "accepted a port that is no number";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "MASTER_PORT");
    }
    ::setenv("MASTER_PORT", "29500", 1);
    const TcpRendezvous at = TcpRendezvous::from_environment();
    EXPECT_EQ(at.host, "node7");
    EXPECT_EQ(at.port, 29500);
    ::unsetenv("MASTER_ADDR");
    ::unsetenv("MASTER_PORT");
}

}  // namespace
}  // namespace upcycle
