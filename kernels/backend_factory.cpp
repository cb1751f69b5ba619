#include "kernels/backend_factory.h"

#include "core/errors.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef UPCYCLE_WITH_CUDA
#include "kernels/cuda/device_query.h"
#endif

namespace upcycle {

std::unique_ptr<Backend> make_backend(const std::string& device) {
    if (device == "cpu") return std::make_unique<CpuBackend>();
    if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
#ifdef UPCYCLE_WITH_CUDA
        const auto devices = list_cuda_devices();
        std::string found = std::to_string(devices.size()) + " CUDA device(s) visible";
        for (const auto& d : devices) found += "; " + d;
        throw UserError("", "--device",
                        "this build has the CUDA toolkit but the CUDA training backend is not "
                        "implemented yet (" + found + "); use --device cpu");
#else
        throw UserError("", "--device",
                        "this build has no CUDA support: configure with -DUPCYCLE_CUDA=ON on a "
                        "machine with the CUDA toolkit, or use --device cpu");
#endif
    }
    throw UserError("", "--device", "expected cpu, cuda or cuda:N, found '" + device + "'");
}

}  // namespace upcycle
