#include "kernels/comm_factory.h"

#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/errors.h"
#include "kernels/comm/mpi_communicator.h"

namespace upcycle {

double collective_timeout_seconds() {
    constexpr double kDefaultSeconds = 600;
    const char* text = std::getenv("UPCYCLE_COLLECTIVE_TIMEOUT");
    if (text == nullptr || *text == '\0') return kDefaultSeconds;
    char* end = nullptr;
    const double seconds = std::strtod(text, &end);
    if (*end != '\0' || !(seconds > 0)) {
        throw UserError("", "UPCYCLE_COLLECTIVE_TIMEOUT",
                        fmt::format("expected a positive number of seconds, found '{}'", text));
    }
    return seconds;
}

std::unique_ptr<Communicator> make_communicator(Backend& backend,
                                                const LaunchEnvironment& launch) {
    if (launch.size == 1) {
        // A device backend's buffers are not host memory: the local copies go through it.
        return std::make_unique<LocalCommunicator>(
            backend.kind() == DeviceKind::CPU ? nullptr : &backend);
    }
    if (backend.kind() != DeviceKind::CPU) {
        throw UserError("", "--device",
                        fmt::format("{} ranks on {}: multi-rank GPU jobs need the NCCL "
                                    "communicator, which this build does not have",
                                    launch.size, backend.describe()));
    }
    auto comm = std::make_unique<MpiCommunicator>(collective_timeout_seconds());
    if (comm->size() != launch.size || comm->rank() != launch.rank) {
        throw UserError("", "",
                        fmt::format("the launcher ({}) says rank {} of {}, MPI says rank {} of "
                                    "{}: was this started by an mpirun of another MPI?",
                                    launch.launcher, launch.rank, launch.size, comm->rank(),
                                    comm->size()));
    }
    return comm;
}

}  // namespace upcycle
