#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_query.h"

namespace upcycle {

std::vector<std::string> list_cuda_devices() {
    std::vector<std::string> out;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // no driver or no device: clear the sticky error, report none
        return out;
    }
    for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop{};
        CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
        out.push_back(std::to_string(i) + ": " + prop.name + " (sm_" + std::to_string(prop.major) +
                      std::to_string(prop.minor) + ", " +
                      std::to_string(prop.totalGlobalMem >> 30) + " GiB)");
    }
    return out;
}

}  // namespace upcycle
