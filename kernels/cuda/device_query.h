#pragma once
// CUDA device discovery, callable from plain C++ (no CUDA header here).
#include <string>
#include <vector>

namespace upcycle {

// One line per visible device: "0: NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)". Empty when no
// device or driver is present (that is not an error: the CPU backend still works).
std::vector<std::string> list_cuda_devices();

}  // namespace upcycle
