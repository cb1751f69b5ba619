// Elementwise add, accumulate, scale: memory-bound loops, vectorised and split over threads
// once the array is large enough to pay for the parallel region.
#include <cstddef>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr std::size_t kParallelMin = 1 << 15;
}  // namespace

void CpuBackend::add(float* out, const float* a, const float* b, std::size_t n) {
    // out may alias a or b: each element is read before it is written, index by index.
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void CpuBackend::accumulate(float* y, const float* x, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
}

void CpuBackend::scale(float* x, float s, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace upcycle
