#pragma once
// The communicator: what training needs from the other ranks of a data- or expert-parallel
// job. One process is simply the 1-rank case (LocalCommunicator, whose collectives move and
// round nothing). MpiCommunicator (kernels/comm, Open MPI, host buffers) and
// NcclCommunicator (kernels/cuda, device buffers) implement the same interface, over the
// memory of their rank's backend, without the trainer changing.
//
// Every collective is called by every rank of the communicator, in the same order, with the
// same counts where a count is said to be shared. Float buffers are memory of the backend the
// communicator serves (host for the local and MPI ones, the GPU for NCCL); the *_host calls
// take host memory whatever the backend, for the few scalars and counts that steer training.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace upcycle {

enum class ReduceOp {
    Sum,      // every rank gets Σ over ranks
    Average,  // every rank gets Σ over ranks / size()
};

class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;  // this process's rank, 0 ≤ rank() < size()
    virtual int size() const = 0;  // ranks in the job
    // What carries the collectives ("local", "mpi", "nccl"), for logs and provenance.
    virtual std::string name() const { return "local"; }

    // data[count] (shared count) becomes the elementwise reduction of all ranks' data, in place.
    virtual void all_reduce(float* data, std::size_t count, ReduceOp op) = 0;
    // send[size()·count] (shared count): rank r gets the reduction of every rank's
    // send[r·count, (r+1)·count) in recv[count]. send and recv do not overlap.
    virtual void reduce_scatter(const float* send, float* recv, std::size_t count, ReduceOp op) = 0;
    // send[count] (shared count): every rank gets recv[size()·count], rank r's send at r·count.
    // send may be recv + rank()·count (in place).
    virtual void all_gather(const float* send, float* recv, std::size_t count) = 0;
    // data[count] (shared count): every rank gets root's.
    virtual void broadcast(float* data, std::size_t count, int root) = 0;
    // Each rank sends send_counts[j] floats to rank j, taken in rank order from send, and
    // receives recv_counts[j] from rank j, placed in rank order in recv. recv_counts must be
    // what exchange_counts(send_counts) returned.
    virtual void all_to_all_v(const float* send, std::span<const int64_t> send_counts, float* recv,
                              std::span<const int64_t> recv_counts) = 0;
    // Returns once every rank has entered it.
    virtual void barrier() = 0;
    // Ends every rank of the job at once with this exit status: what a rank that fails does,
    // while the others wait for it in a collective (a normal exit would wait for them in the
    // transport's shutdown). By default the process exits at once, without destructors, which
    // a launcher takes for a dead rank.
    [[noreturn]] virtual void abort_job(int exit_status);

    // Host memory, whatever the backend. values[n] (shared n) becomes the reduction over ranks.
    virtual void all_reduce_host(double* values, std::size_t n, ReduceOp op) = 0;
    // Host memory: recv[size()·n] from every rank's values[n] (shared n), in rank order.
    virtual void all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) = 0;
    // Host memory: bytes (any length on root; resized on the others) become root's.
    virtual void broadcast_host(std::vector<uint8_t>& bytes, int root) = 0;

    // The counts all_to_all_v will receive: recv_counts[j] = what rank j sends to this rank
    // (send_counts has size() entries). One small host exchange.
    std::vector<int64_t> exchange_counts(std::span<const int64_t> send_counts);

    // Tensor conveniences over the pointer calls (float32 tensors on the served backend).
    void all_reduce(Tensor& buffer, ReduceOp op);

    // Data parallelism, between the backward passes and the optimizer step: every rank's
    // gradients [parameters] become the mean over ranks. Each rank's gradient is the mean over
    // its own equal share of the batch, so the mean over ranks is the whole batch's.
    // Virtual so that a communicator may reduce in buckets, overlapped with the backward.
    virtual void all_reduce_gradients(Tensor& gradients) {
        all_reduce(gradients, ReduceOp::Average);
    }
};

// One process, one rank: the sum and the mean over ranks are the rank's own buffer.
// For a rank that failed while the others may wait for it in a collective: prints the error
// with its rank and ends the whole job (exit status 2 for a UserError, 1 otherwise).
[[noreturn]] void end_job_after_failure(Communicator& ranks, const std::exception& error);

class LocalCommunicator final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void all_reduce(float* data, std::size_t count, ReduceOp op) override;
    void reduce_scatter(const float* send, float* recv, std::size_t count, ReduceOp op) override;
    void all_gather(const float* send, float* recv, std::size_t count) override;
    void broadcast(float* /*data*/, std::size_t /*count*/, int root) override;
    void all_to_all_v(const float* send, std::span<const int64_t> send_counts, float* recv,
                      std::span<const int64_t> recv_counts) override;
    void barrier() override {}
    void all_reduce_host(double* /*values*/, std::size_t /*n*/, ReduceOp /*op*/) override {}
    void all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) override;
    void broadcast_host(std::vector<uint8_t>& /*bytes*/, int root) override;
    using Communicator::all_reduce;

    // The local communicator of a backend whose memory is not the host's (a GPU run on one
    // device) copies through it: set by whoever builds the communicator for such a backend.
    explicit LocalCommunicator(Backend* backend = nullptr) : backend_(backend) {}

private:
    void copy(float* dst, const float* src, std::size_t count);
    Backend* backend_;
};

// The process-wide 1-rank communicator of host memory (what a training run uses unless given
// another).
Communicator& local_communicator();

// Where this process sits in a job, read from the launcher's environment: Open MPI's mpirun
// (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK), SLURM's srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
// SLURM_LOCALID) or torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK), in that order;
// a process started by none of them is rank 0 of 1. (SLURM_STEP_NUM_TASKS, not SLURM_NTASKS:
// a batch script's own process sees SLURM_NTASKS of its allocation but is no rank of a step.)
struct LaunchEnvironment {
    int rank = 0;
    int size = 1;
    int local_rank = 0;    // rank among the job's processes on this node (picks the GPU)
    std::string launcher;  // "mpirun", "srun", "env" or "none"
};
LaunchEnvironment launch_environment();

}  // namespace upcycle
