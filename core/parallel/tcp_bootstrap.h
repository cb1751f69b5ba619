#pragma once
// A one-time broadcast of a few bytes from rank 0 to every other rank over TCP, for jobs not
// launched by mpirun (torchrun-style RANK/WORLD_SIZE with MASTER_ADDR:MASTER_PORT): it hands
// out NCCL's unique id. Rank 0 listens on the port and sends the bytes to each rank that
// connects; the others connect (retrying while rank 0 is not up yet) and read them.
#include <cstdint>
#include <string>
#include <vector>

namespace upcycle {

struct TcpRendezvous {
    std::string host;  // MASTER_ADDR: rank 0's address, as the other ranks reach it
    int port = 0;      // MASTER_PORT
    static TcpRendezvous from_environment();  // UserError naming the variable if unset/bad
};

// rank 0: sends `bytes` to the size−1 other ranks and returns them; another rank: returns
// what rank 0 sent (`bytes` ignored). Throws (naming the address) if the exchange does not
// complete within timeout_seconds.
std::vector<uint8_t> tcp_broadcast_from_rank0(const TcpRendezvous& at, int rank, int size,
                                              const std::vector<uint8_t>& bytes,
                                              double timeout_seconds);

}  // namespace upcycle
