#include "kernels/cuda/nccl_communicator.h"

#include <nccl.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/parallel/tcp_bootstrap.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.cuh"

namespace upcycle {

namespace {

void nccl_failed(ncclResult_t status, const char* statement) {
    throw std::runtime_error(
        fmt::format("NCCL error: {} in {}", ncclGetErrorString(status), statement));
}

}  // namespace

#define NCCL_CHECK(statement)                                                              \
    do {                                                                                   \
        const ncclResult_t upcycle_nccl_status_ = (statement);                             \
        if (upcycle_nccl_status_ != ncclSuccess && upcycle_nccl_status_ != ncclInProgress) \
            nccl_failed(upcycle_nccl_status_, #statement);                                 \
    } while (0)

bool nccl_available() { return true; }

struct NcclState {
    ncclComm_t comm = nullptr;
    cudaStream_t stream = nullptr;
    Backend* allocator = nullptr;  // the backend's caching allocator
    // Device scratch for the host calls (doubles, int64 and bytes alike), grown on demand.
    void* scratch = nullptr;
    std::size_t scratch_bytes = 0;

    void* scratch_of(std::size_t bytes) {
        if (bytes > scratch_bytes) {
            if (scratch) allocator->deallocate(scratch);
            scratch = allocator->allocate(bytes);
            scratch_bytes = bytes;
        }
        return scratch;
    }
};

NcclCommunicator::NcclCommunicator(CudaBackend& backend, const LaunchEnvironment& launch,
                                   Communicator* bootstrap, double collective_timeout_seconds)
    : backend_(&backend),
      rank_(launch.rank),
      size_(launch.size),
      timeout_seconds_(collective_timeout_seconds),
      state_(std::make_unique<NcclState>()) {
    state_->stream = static_cast<cudaStream_t>(backend.stream_handle());
    state_->allocator = &backend;
    CUDA_CHECK(cudaSetDevice(backend.device_index()));

    // Rank 0's unique id, handed to every rank.
    ncclUniqueId id;
    std::vector<uint8_t> bytes(sizeof(id));
    if (rank_ == 0) {
        NCCL_CHECK(ncclGetUniqueId(&id));
        std::memcpy(bytes.data(), &id, sizeof(id));
    }
    if (size_ > 1) {
        if (bootstrap != nullptr) {
            UPCYCLE_ASSERT(bootstrap->size() == size_ && bootstrap->rank() == rank_,
                           "the bootstrap communicator must hold the same ranks");
            bootstrap->broadcast_host(bytes, 0);
        } else {
            bytes = tcp_broadcast_from_rank0(TcpRendezvous::from_environment(), rank_, size_, bytes,
                                             timeout_seconds_);
        }
    }
    if (bytes.size() != sizeof(id)) {
        throw std::runtime_error("NCCL bootstrap: rank 0 sent no NCCL unique id");
    }
    std::memcpy(&id, bytes.data(), sizeof(id));
    NCCL_CHECK(ncclCommInitRank(&state_->comm, size_, id, rank_));
}

NcclCommunicator::~NcclCommunicator() {
    if (state_->scratch) state_->allocator->deallocate(state_->scratch);
    if (state_->comm) ncclCommDestroy(state_->comm);
}

void NcclCommunicator::wait(const char* collective) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    while (true) {
        const cudaError_t status = cudaStreamQuery(state_->stream);
        if (status == cudaSuccess) return;
        if (status != cudaErrorNotReady) CUDA_CHECK(status);
        ncclResult_t async = ncclSuccess;
        NCCL_CHECK(ncclCommGetAsyncError(state_->comm, &async));
        if (async != ncclSuccess) {
            ncclCommAbort(state_->comm);
            state_->comm = nullptr;
            nccl_failed(async, collective);
        }
        const double waited = std::chrono::duration<double>(Clock::now() - start).count();
        if (waited > timeout_seconds_) {
            ncclCommAbort(state_->comm);
            state_->comm = nullptr;
            throw std::runtime_error(fmt::format(
                "rank {} of {}: {} has waited {:.0f} s for the other ranks (the collective "
                "timeout, UPCYCLE_COLLECTIVE_TIMEOUT): a rank is dead or hung",
                rank_, size_, collective, waited));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

void NcclCommunicator::all_reduce(float* data, std::size_t count, ReduceOp op) {
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32,
                             op == ReduceOp::Average ? ncclAvg : ncclSum, state_->comm,
                             state_->stream));
}

void NcclCommunicator::reduce_scatter(const float* send, float* recv, std::size_t count,
                                      ReduceOp op) {
    NCCL_CHECK(ncclReduceScatter(send, recv, count, ncclFloat32,
                                 op == ReduceOp::Average ? ncclAvg : ncclSum, state_->comm,
                                 state_->stream));
}

void NcclCommunicator::all_gather(const float* send, float* recv, std::size_t count) {
    NCCL_CHECK(ncclAllGather(send, recv, count, ncclFloat32, state_->comm, state_->stream));
}

void NcclCommunicator::broadcast(float* data, std::size_t count, int root) {
    NCCL_CHECK(ncclBroadcast(data, data, count, ncclFloat32, root, state_->comm, state_->stream));
}

void NcclCommunicator::all_to_all_v(const float* send, std::span<const int64_t> send_counts,
                                    float* recv, std::span<const int64_t> recv_counts) {
    const auto n = static_cast<std::size_t>(size_);
    UPCYCLE_ASSERT(send_counts.size() == n && recv_counts.size() == n,
                   "all_to_all_v needs one count per rank");
    // Point-to-point pairs in one group: NCCL schedules them together, without deadlock.
    NCCL_CHECK(ncclGroupStart());
    int64_t send_offset = 0, recv_offset = 0;
    for (std::size_t peer = 0; peer < n; ++peer) {
        const int p = static_cast<int>(peer);
        if (send_counts[peer] > 0) {
            NCCL_CHECK(ncclSend(send + send_offset, static_cast<std::size_t>(send_counts[peer]),
                                ncclFloat32, p, state_->comm, state_->stream));
        }
        if (recv_counts[peer] > 0) {
            NCCL_CHECK(ncclRecv(recv + recv_offset, static_cast<std::size_t>(recv_counts[peer]),
                                ncclFloat32, p, state_->comm, state_->stream));
        }
        send_offset += send_counts[peer];
        recv_offset += recv_counts[peer];
    }
    NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::barrier() {
    float* one = static_cast<float*>(state_->scratch_of(sizeof(float)));
    NCCL_CHECK(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, state_->comm, state_->stream));
    wait("barrier");
}

void NcclCommunicator::all_reduce_host(double* values, std::size_t n, ReduceOp op) {
    if (n == 0) return;
    auto* device = static_cast<double*>(state_->scratch_of(n * sizeof(double)));
    CUDA_CHECK(cudaMemcpyAsync(device, values, n * sizeof(double), cudaMemcpyHostToDevice,
                               state_->stream));
    NCCL_CHECK(ncclAllReduce(device, device, n, ncclFloat64,
                             op == ReduceOp::Average ? ncclAvg : ncclSum, state_->comm,
                             state_->stream));
    CUDA_CHECK(cudaMemcpyAsync(values, device, n * sizeof(double), cudaMemcpyDeviceToHost,
                               state_->stream));
    wait("all_reduce_host");
}

void NcclCommunicator::all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) {
    if (n == 0) return;
    const std::size_t all = n * static_cast<std::size_t>(size_);
    auto* device = static_cast<int64_t*>(state_->scratch_of(all * sizeof(int64_t)));
    int64_t* mine = device + n * static_cast<std::size_t>(rank_);
    CUDA_CHECK(
        cudaMemcpyAsync(mine, values, n * sizeof(int64_t), cudaMemcpyHostToDevice, state_->stream));
    NCCL_CHECK(ncclAllGather(mine, device, n, ncclInt64, state_->comm, state_->stream));
    CUDA_CHECK(cudaMemcpyAsync(recv, device, all * sizeof(int64_t), cudaMemcpyDeviceToHost,
                               state_->stream));
    wait("all_gather_host");
}

void NcclCommunicator::broadcast_host(std::vector<uint8_t>& bytes, int root) {
    double length = rank_ == root ? static_cast<double>(bytes.size()) : 0.0;
    all_reduce_host(&length, 1, ReduceOp::Sum);  // only root contributes: its length
    bytes.resize(static_cast<std::size_t>(length));
    if (bytes.empty()) return;
    auto* device = static_cast<uint8_t*>(state_->scratch_of(bytes.size()));
    CUDA_CHECK(cudaMemcpyAsync(device, bytes.data(), bytes.size(), cudaMemcpyHostToDevice,
                               state_->stream));
    NCCL_CHECK(
        ncclBroadcast(device, device, bytes.size(), ncclUint8, root, state_->comm, state_->stream));
    CUDA_CHECK(cudaMemcpyAsync(bytes.data(), device, bytes.size(), cudaMemcpyDeviceToHost,
                               state_->stream));
    wait("broadcast_host");
}

}  // namespace upcycle
