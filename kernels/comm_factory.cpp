#include "kernels/comm_factory.h"

#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/errors.h"
#include "kernels/comm/mpi_communicator.h"
#ifdef UPCYCLE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_communicator.h"
#endif

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

std::unique_ptr<Communicator> make_communicator(Backend& backend, const LaunchEnvironment& launch) {
    if (launch.size == 1) {
        // A device backend's buffers are not host memory: the local copies go through it.
        return std::make_unique<LocalCommunicator>(backend.kind() == DeviceKind::CPU ? nullptr
                                                                                     : &backend);
    }
    if (backend.kind() == DeviceKind::CUDA) {
#ifdef UPCYCLE_WITH_CUDA
        // NCCL's unique id travels over MPI under mpirun, else over TCP (MASTER_ADDR/PORT).
        std::unique_ptr<MpiCommunicator> bootstrap;
        if (launch.launcher == "mpirun" && mpi_available()) {
            bootstrap = std::make_unique<MpiCommunicator>(collective_timeout_seconds());
        }
        return std::make_unique<NcclCommunicator>(dynamic_cast<CudaBackend&>(backend), launch,
                                                  bootstrap.get(), collective_timeout_seconds());
#endif
    }
    if (backend.kind() != DeviceKind::CPU) {
        throw UserError("", "--device",
                        fmt::format("{} ranks on {}: this build has no communicator for it",
                                    launch.size, backend.describe()));
    }
    auto comm = std::make_unique<MpiCommunicator>(collective_timeout_seconds());
    if (comm->size() != launch.size || comm->rank() != launch.rank) {
        throw UserError(
            "", "",
            fmt::format("the launcher ({}) says rank {} of {}, MPI says rank {} of "
                        "{}: was this started by an mpirun of another MPI?",
                        launch.launcher, launch.rank, launch.size, comm->rank(), comm->size()));
    }
    return comm;
}

}  // namespace upcycle
