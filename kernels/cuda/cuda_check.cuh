#pragma once
// CUDA_CHECK: every CUDA runtime call goes through it; a failure throws with the statement,
// file, line and CUDA's own message.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace upcycle {

[[noreturn]] inline void cuda_failed(cudaError_t status, const char* statement, const char* file,
                                     int line) {
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status) + " in " +
                             statement + " at " + file + ":" + std::to_string(line));
}

}  // namespace upcycle

#define CUDA_CHECK(statement)                                                         \
    do {                                                                              \
        const cudaError_t upcycle_status_ = (statement);                              \
        if (upcycle_status_ != cudaSuccess)                                           \
            ::upcycle::cuda_failed(upcycle_status_, #statement, __FILE__, __LINE__);  \
    } while (0)
