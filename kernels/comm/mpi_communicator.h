#pragma once
// The communicator over MPI (Open MPI from Debian), for CPU ranks: the buffers are host
// memory. The process's MPI world is initialised on first use and finalised at exit; a job is
// launched by `mpirun -np N upcycle …` or `srun -n N upcycle …` (Open MPI's PMIx support).
//
// A rank that dies makes mpirun (or srun with --kill-on-bad-exit) end the others. A rank that
// hangs, or a peer that never arrives, is caught by a watchdog: a collective that has not
// returned within the timeout ends the whole job with MPI_Abort and a message naming the
// collective, instead of hanging forever.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "core/comm.h"

namespace upcycle {

// Whether this build can make an MPI communicator (configured with MPI found).
bool mpi_available();

class MpiCommunicator final : public Communicator {
public:
    // The world of this process's job. collective_timeout_seconds ≤ 0: no watchdog.
    explicit MpiCommunicator(double collective_timeout_seconds = 600);
    ~MpiCommunicator() override;
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string name() const override { return "mpi"; }

    void all_reduce(float* data, std::size_t count, ReduceOp op) override;
    void reduce_scatter(const float* send, float* recv, std::size_t count, ReduceOp op) override;
    void all_gather(const float* send, float* recv, std::size_t count) override;
    void broadcast(float* data, std::size_t count, int root) override;
    void all_to_all_v(const float* send, std::span<const int64_t> send_counts, float* recv,
                      std::span<const int64_t> recv_counts) override;
    void barrier() override;
    [[noreturn]] void abort_job(int exit_status) override;  // MPI_Abort
    void all_reduce_host(double* values, std::size_t n, ReduceOp op) override;
    void all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) override;
    void broadcast_host(std::vector<uint8_t>& bytes, int root) override;
    using Communicator::all_reduce;

private:
    // Marks a collective as in flight for the watchdog (RAII: cleared when it returns).
    class InFlight;
    void watch();

    int rank_ = 0;
    int size_ = 1;
    double timeout_seconds_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    const char* in_flight_ = nullptr;  // the collective now running (guarded by mutex_)
    std::chrono::steady_clock::time_point in_flight_since_;
    std::thread watchdog_;
};

}  // namespace upcycle
