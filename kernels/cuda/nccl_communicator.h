#pragma once
// The communicator over NCCL, for GPU ranks: the float buffers are device memory of the
// rank's CudaBackend, and every collective is queued on that backend's stream, in order with
// the ops around it (no host synchronisation; the *_host calls and barrier() synchronise, as
// they must return host values).
//
// Bootstrap: NCCL's unique id is made by rank 0 and handed to the others over MPI when the
// job was launched by mpirun (a bootstrap communicator is given), else over TCP: rank 0
// listens on MASTER_ADDR:MASTER_PORT, the others connect (torchrun's convention).
//
// Hangs: host-synchronising calls wait at most the collective timeout; past it the NCCL
// communicator is aborted and the call throws, naming the collective, so a dead peer ends
// the job instead of hanging it. Errors NCCL reports asynchronously (a peer's network gone)
// are checked at the same points.
//
// Plain C++ header (no CUDA or NCCL header): the NCCL state lives behind a pointer.
#include <memory>
#include <string>

#include "core/comm.h"

namespace upcycle {

class CudaBackend;
struct NcclState;

class NcclCommunicator final : public Communicator {
public:
    // launch: this rank's place in the job. bootstrap: an MPI communicator of the same ranks
    // (mpirun), or null to bootstrap over TCP at MASTER_ADDR:MASTER_PORT (size > 1).
    NcclCommunicator(CudaBackend& backend, const LaunchEnvironment& launch,
                     Communicator* bootstrap, double collective_timeout_seconds);
    ~NcclCommunicator() override;
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string name() const override { return "nccl"; }

    void all_reduce(float* data, std::size_t count, ReduceOp op) override;
    void reduce_scatter(const float* send, float* recv, std::size_t count, ReduceOp op) override;
    void all_gather(const float* send, float* recv, std::size_t count) override;
    void broadcast(float* data, std::size_t count, int root) override;
    void all_to_all_v(const float* send, std::span<const int64_t> send_counts, float* recv,
                      std::span<const int64_t> recv_counts) override;
    void barrier() override;
    void all_reduce_host(double* values, std::size_t n, ReduceOp op) override;
    void all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) override;
    void broadcast_host(std::vector<uint8_t>& bytes, int root) override;
    using Communicator::all_reduce;

private:
    // Waits for the stream's queued work within the timeout (see above).
    void wait(const char* collective);

    CudaBackend* backend_;
    int rank_ = 0;
    int size_ = 1;
    double timeout_seconds_;
    std::unique_ptr<NcclState> state_;
};

// Whether this build has NCCL (a CUDA build does).
bool nccl_available();

}  // namespace upcycle
