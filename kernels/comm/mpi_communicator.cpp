#include "kernels/comm/mpi_communicator.h"

#include <climits>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "core/errors.h"

#if UPCYCLE_WITH_MPI
// The C API only: Open MPI's mpi.h otherwise pulls in its removed C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace upcycle {

#if UPCYCLE_WITH_MPI

bool mpi_available() { return true; }

namespace {

void mpi_check(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {0};
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw std::runtime_error(fmt::format("MPI: {} failed: {}", call, text));
}
#define MPI_CHECK(call) mpi_check((call), #call)

// MPI counts are int: a larger buffer goes in pieces of at most this many elements.
constexpr std::size_t kMaxPiece = std::size_t{1} << 30;

// Initialises the process's MPI world once, and finalises it at exit (after every
// communicator is gone: this object outlives them as a function-local static made first).
class MpiWorld {
public:
    static void ensure() { static MpiWorld world; }
    ~MpiWorld() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }

private:
    MpiWorld() {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (initialized) return;
        int provided = 0;
        // SERIALIZED: the trainer's collectives may come from a thread other than main (the
        // executor trains in a worker), never from two threads at once.
        MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
        // Errors come back as codes (thrown as exceptions) rather than aborting inside MPI.
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
};

int int_count(int64_t count, const char* what) {
    if (count < 0 || count > INT_MAX) {
        throw std::runtime_error(
            fmt::format("MPI: {} of {} elements does not fit MPI's int counts", what, count));
    }
    return static_cast<int>(count);
}

}  // namespace

class MpiCommunicator::InFlight {
public:
    InFlight(MpiCommunicator& comm, const char* what) : comm_(comm) {
        std::lock_guard<std::mutex> lock(comm_.mutex_);
        comm_.in_flight_ = what;
        comm_.in_flight_since_ = std::chrono::steady_clock::now();
    }
    ~InFlight() {
        std::lock_guard<std::mutex> lock(comm_.mutex_);
        comm_.in_flight_ = nullptr;
    }

private:
    MpiCommunicator& comm_;
};

MpiCommunicator::MpiCommunicator(double collective_timeout_seconds)
    : timeout_seconds_(collective_timeout_seconds) {
    MpiWorld::ensure();
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
    if (timeout_seconds_ > 0) watchdog_ = std::thread([this] { watch(); });
}

MpiCommunicator::~MpiCommunicator() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
}

void MpiCommunicator::watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, std::chrono::seconds(1));
        if (stopping_ || in_flight_ == nullptr) continue;
        const double waited =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - in_flight_since_)
                .count();
        if (waited < timeout_seconds_) continue;
        std::fprintf(stderr,
                     "upcycle: rank %d of %d: %s has waited %.0f s for the other ranks (the "
                     "collective timeout, UPCYCLE_COLLECTIVE_TIMEOUT): a rank is dead or hung; "
                     "ending the job\n",
                     rank_, size_, in_flight_, waited);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, EXIT_FAILURE);
    }
}

void MpiCommunicator::all_reduce(float* data, std::size_t count, ReduceOp op) {
    InFlight guard(*this, "all_reduce");
    for (std::size_t start = 0; start < count; start += kMaxPiece) {
        const std::size_t piece = std::min(kMaxPiece, count - start);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + start, static_cast<int>(piece), MPI_FLOAT,
                                MPI_SUM, MPI_COMM_WORLD));
    }
    if (op == ReduceOp::Average && size_ > 1) {
        const float inverse = 1.0f / static_cast<float>(size_);
        for (std::size_t i = 0; i < count; ++i) data[i] *= inverse;
    }
}

void MpiCommunicator::reduce_scatter(const float* send, float* recv, std::size_t count,
                                     ReduceOp op) {
    InFlight guard(*this, "reduce_scatter");
    MPI_CHECK(MPI_Reduce_scatter_block(send, recv,
                                       int_count(static_cast<int64_t>(count), "reduce_scatter"),
                                       MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    if (op == ReduceOp::Average && size_ > 1) {
        const float inverse = 1.0f / static_cast<float>(size_);
        for (std::size_t i = 0; i < count; ++i) recv[i] *= inverse;
    }
}

void MpiCommunicator::all_gather(const float* send, float* recv, std::size_t count) {
    InFlight guard(*this, "all_gather");
    const int n = int_count(static_cast<int64_t>(count), "all_gather");
    const bool in_place = send == recv + static_cast<std::size_t>(rank_) * count;
    MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, n, MPI_FLOAT, recv, n, MPI_FLOAT,
                            MPI_COMM_WORLD));
}

void MpiCommunicator::broadcast(float* data, std::size_t count, int root) {
    InFlight guard(*this, "broadcast");
    for (std::size_t start = 0; start < count; start += kMaxPiece) {
        const std::size_t piece = std::min(kMaxPiece, count - start);
        MPI_CHECK(
            MPI_Bcast(data + start, static_cast<int>(piece), MPI_FLOAT, root, MPI_COMM_WORLD));
    }
}

void MpiCommunicator::all_to_all_v(const float* send, std::span<const int64_t> send_counts,
                                   float* recv, std::span<const int64_t> recv_counts) {
    InFlight guard(*this, "all_to_all_v");
    const auto n = static_cast<std::size_t>(size_);
    UPCYCLE_ASSERT(send_counts.size() == n && recv_counts.size() == n,
                   "all_to_all_v needs one count per rank");
    std::vector<int> sc(n), sd(n), rc(n), rd(n);
    int64_t send_offset = 0, recv_offset = 0;
    for (std::size_t j = 0; j < n; ++j) {
        sc[j] = int_count(send_counts[j], "all_to_all_v send");
        rc[j] = int_count(recv_counts[j], "all_to_all_v receive");
        sd[j] = int_count(send_offset, "all_to_all_v send offset");
        rd[j] = int_count(recv_offset, "all_to_all_v receive offset");
        send_offset += send_counts[j];
        recv_offset += recv_counts[j];
    }
    MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(),
                            MPI_FLOAT, MPI_COMM_WORLD));
}

void MpiCommunicator::barrier() {
    InFlight guard(*this, "barrier");
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

void MpiCommunicator::abort_job(int exit_status) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_status);
    std::_Exit(exit_status);  // MPI_Abort does not return; should it, the process still ends
}

void MpiCommunicator::all_reduce_host(double* values, std::size_t n, ReduceOp op) {
    InFlight guard(*this, "all_reduce_host");
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values,
                            int_count(static_cast<int64_t>(n), "all_reduce_host"), MPI_DOUBLE,
                            MPI_SUM, MPI_COMM_WORLD));
    if (op == ReduceOp::Average) {
        for (std::size_t i = 0; i < n; ++i) values[i] /= size_;
    }
}

void MpiCommunicator::all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) {
    InFlight guard(*this, "all_gather_host");
    const int count = int_count(static_cast<int64_t>(n), "all_gather_host");
    MPI_CHECK(MPI_Allgather(values, count, MPI_INT64_T, recv, count, MPI_INT64_T, MPI_COMM_WORLD));
}

void MpiCommunicator::broadcast_host(std::vector<uint8_t>& bytes, int root) {
    InFlight guard(*this, "broadcast_host");
    int64_t length = static_cast<int64_t>(bytes.size());
    MPI_CHECK(MPI_Bcast(&length, 1, MPI_INT64_T, root, MPI_COMM_WORLD));
    bytes.resize(static_cast<std::size_t>(length));
    MPI_CHECK(MPI_Bcast(bytes.data(), int_count(length, "broadcast_host"), MPI_BYTE, root,
                        MPI_COMM_WORLD));
}

#else  // a build without MPI

bool mpi_available() { return false; }

namespace {
[[noreturn]] void no_mpi() {
    throw UserError("", "",
                    "this build of upcycle has no MPI: install Open MPI (libopenmpi-dev; "
                    "scripts/setup.sh does) and rebuild, to run on more than one rank");
}
}  // namespace

class MpiCommunicator::InFlight {};
MpiCommunicator::MpiCommunicator(double collective_timeout_seconds)
    : timeout_seconds_(collective_timeout_seconds) {
    no_mpi();
}
MpiCommunicator::~MpiCommunicator() = default;
void MpiCommunicator::watch() {}
void MpiCommunicator::all_reduce(float*, std::size_t, ReduceOp) { no_mpi(); }
void MpiCommunicator::reduce_scatter(const float*, float*, std::size_t, ReduceOp) { no_mpi(); }
void MpiCommunicator::all_gather(const float*, float*, std::size_t) { no_mpi(); }
void MpiCommunicator::broadcast(float*, std::size_t, int) { no_mpi(); }
void MpiCommunicator::all_to_all_v(const float*, std::span<const int64_t>, float*,
                                   std::span<const int64_t>) {
    no_mpi();
}
void MpiCommunicator::barrier() { no_mpi(); }
void MpiCommunicator::abort_job(int exit_status) { Communicator::abort_job(exit_status); }
void MpiCommunicator::all_reduce_host(double*, std::size_t, ReduceOp) { no_mpi(); }
void MpiCommunicator::all_gather_host(const int64_t*, int64_t*, std::size_t) { no_mpi(); }
void MpiCommunicator::broadcast_host(std::vector<uint8_t>&, int) { no_mpi(); }

#endif

}  // namespace upcycle
