#include "kernels/backend_factory.h"

#include <charconv>
#include <system_error>

#include "core/comm.h"
#include "core/errors.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef UPCYCLE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device_query.h"
#endif

namespace upcycle {

namespace {

// The N of "cuda:N": a non-negative decimal integer and nothing else. Plain "cuda" is the GPU
// of this rank on its node: its local rank among the visible devices (0 for one process, and
// for a task that sees only its own GPU).
int cuda_device_index(const std::string& device) {
    if (device == "cuda") {
        const int local_rank = launch_environment().local_rank;
#ifdef UPCYCLE_WITH_CUDA
        const int visible = static_cast<int>(list_cuda_devices().size());
        return visible > 0 ? local_rank % visible : 0;
#else
        return local_rank;
#endif
    }
    const std::string digits = device.substr(5);  // after "cuda:"
    int index = -1;
    const char* first = digits.data();
    const char* last = first + digits.size();
    const auto [end, error] = std::from_chars(first, last, index);
    if (digits.empty() || error != std::errc() || end != last || index < 0) {
        throw UserError(
            "", "--device",
            "expected cuda or cuda:N with N a device number (0, 1, ...), found '" + device + "'");
    }
    return index;
}

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& device) {
    if (device == "cpu") return std::make_unique<CpuBackend>();
    if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
        const int index = cuda_device_index(device);
#ifdef UPCYCLE_WITH_CUDA
        return std::make_unique<CudaBackend>(index);  // UserError if there is no such device
#else
        (void)index;
        throw UserError("", "--device",
                        "this build has no CUDA support: configure with -DUPCYCLE_CUDA=ON on a "
                        "machine with the CUDA toolkit, or use --device cpu");
#endif
    }
    throw UserError("", "--device", "expected cpu, cuda or cuda:N, found '" + device + "'");
}

}  // namespace upcycle
