#include "core/comm.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "core/backend.h"
#include "core/errors.h"

namespace upcycle {

std::vector<int64_t> Communicator::exchange_counts(std::span<const int64_t> send_counts) {
    const auto n = static_cast<std::size_t>(size());
    UPCYCLE_ASSERT(send_counts.size() == n, "exchange_counts needs one count per rank");
    std::vector<int64_t> everyone(n * n);  // row j: what rank j sends to each rank
    all_gather_host(send_counts.data(), everyone.data(), n);
    std::vector<int64_t> recv_counts(n);
    for (std::size_t j = 0; j < n; ++j)
        recv_counts[j] = everyone[j * n + static_cast<std::size_t>(rank())];
    return recv_counts;
}

void Communicator::abort_job(int exit_status) {
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(exit_status);
}

void end_job_after_failure(Communicator& ranks, const std::exception& error) {
    const bool user_error = dynamic_cast<const UserError*>(&error) != nullptr;
    fmt::print(stderr, "upcycle: {}error: rank {} of {}: {}\n", user_error ? "" : "internal ",
               ranks.rank(), ranks.size(), error.what());
    ranks.abort_job(user_error ? 2 : 1);
    std::_Exit(1);  // an override that returned
}

void Communicator::all_reduce(Tensor& buffer, ReduceOp op) {
    UPCYCLE_ASSERT(buffer.dtype() == DType::F32, "all_reduce reduces float32 buffers");
    all_reduce(buffer.f32(), static_cast<std::size_t>(buffer.numel()), op);
}

void LocalCommunicator::copy(float* dst, const float* src, std::size_t count) {
    if (dst == src || count == 0) return;
    if (backend_ != nullptr) {
        backend_->copy(dst, src, count * sizeof(float));
    } else {
        std::memcpy(dst, src, count * sizeof(float));
    }
}

void LocalCommunicator::all_reduce(float* /*data*/, std::size_t /*count*/, ReduceOp /*op*/) {
    // Nothing to do, and nothing done: not even a scale by 1/size(), which would quiet a
    // signalling NaN, so one rank's result is bit for bit its input.
}

void LocalCommunicator::reduce_scatter(const float* send, float* recv, std::size_t count,
                                       ReduceOp /*op*/) {
    copy(recv, send, count);
}

void LocalCommunicator::all_gather(const float* send, float* recv, std::size_t count) {
    copy(recv, send, count);
}

void LocalCommunicator::broadcast(float* /*data*/, std::size_t /*count*/, int root) {
    UPCYCLE_ASSERT(root == 0, "a 1-rank job has only root 0");
}

void LocalCommunicator::all_to_all_v(const float* send, std::span<const int64_t> send_counts,
                                     float* recv, std::span<const int64_t> recv_counts) {
    UPCYCLE_ASSERT(
        send_counts.size() == 1 && recv_counts.size() == 1 && send_counts[0] == recv_counts[0],
        "a 1-rank all_to_all_v sends its rows to itself");
    copy(recv, send, static_cast<std::size_t>(send_counts[0]));
}

void LocalCommunicator::all_gather_host(const int64_t* values, int64_t* recv, std::size_t n) {
    if (recv != values && n > 0) std::memcpy(recv, values, n * sizeof(int64_t));
}

void LocalCommunicator::broadcast_host(std::vector<uint8_t>& /*bytes*/, int root) {
    UPCYCLE_ASSERT(root == 0, "a 1-rank job has only root 0");
}

Communicator& local_communicator() {
    static LocalCommunicator local;
    return local;
}

namespace {

std::optional<int> integer_variable(const char* name) {
    const char* text = std::getenv(name);
    if (text == nullptr || *text == '\0') return std::nullopt;
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    if (*end != '\0' || value < 0 || value > (1 << 24)) {
        throw UserError("", name,
                        fmt::format("the environment variable is '{}', not a rank or a rank "
                                    "count (expected a non-negative integer)",
                                    text));
    }
    return static_cast<int>(value);
}

// The three variables of one launcher, if it set the first two.
std::optional<LaunchEnvironment> read_launcher(const char* rank, const char* size,
                                               const char* local_rank, const char* launcher) {
    const auto r = integer_variable(rank);
    const auto s = integer_variable(size);
    if (!r || !s) return std::nullopt;
    if (*s < 1 || *r >= *s) {
        throw UserError("", rank,
                        fmt::format("{}={} and {}={} do not describe a rank of the job "
                                    "(expected 0 ≤ rank < size)",
                                    rank, *r, size, *s));
    }
    return LaunchEnvironment{*r, *s, integer_variable(local_rank).value_or(0), launcher};
}

}  // namespace

LaunchEnvironment launch_environment() {
    if (auto env = read_launcher("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                 "OMPI_COMM_WORLD_LOCAL_RANK", "mpirun")) {
        return *env;
    }
    if (auto env = read_launcher("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "srun")) {
        return *env;
    }
    if (auto env = read_launcher("RANK", "WORLD_SIZE", "LOCAL_RANK", "env")) return *env;
    return LaunchEnvironment{0, 1, 0, "none"};
}

}  // namespace upcycle
