// Σ x² in double, deterministic: fixed-size chunks (independent of the thread count), one
// double partial sum per chunk, partials added in chunk order.
#include <cstddef>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

namespace {
constexpr std::size_t kChunk = 1 << 14;  // elements per partial sum
}  // namespace

double CpuBackend::sum_squares(const float* x, std::size_t n) {
    if (n == 0) return 0.0;
    const std::size_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (std::size_t c = 0; c < chunks; ++c) {
        const std::size_t begin = c * kChunk;
        const std::size_t end = begin + kChunk < n ? begin + kChunk : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (std::size_t i = begin; i < end; ++i) {
            const double v = x[i];
            s += v * v;
        }
        partial[c] = s;
    }
    double total = 0.0;
    for (double p : partial) total += p;
    return total;
}

}  // namespace upcycle
