// CpuBackend: memory, description. The ops live one per file beside this one.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/blas_setup.h"
#include "kernels/cpu/process_setup.h"

namespace upcycle {

namespace {
// One cache line, and the width of an AVX-512 register: aligned vector loads everywhere.
constexpr std::size_t kAlignment = 64;
// copy and zero split buffers of at least this many bytes over the threads, in slices of
// whole cache lines; one core alone does not reach the memory bandwidth.
constexpr std::size_t kParallelBytes = std::size_t{1} << 20;

// Calls fn(offset, length) on contiguous slices of [0, bytes), one per thread.
template <class Fn>
void for_each_slice(std::size_t bytes, Fn fn) {
#pragma omp parallel if (bytes >= kParallelBytes)
    {
        const std::size_t lines = (bytes + kAlignment - 1) / kAlignment;
        const std::size_t nthreads = static_cast<std::size_t>(omp_get_num_threads());
        const std::size_t tid = static_cast<std::size_t>(omp_get_thread_num());
        const std::size_t begin = std::min(bytes, lines * tid / nthreads * kAlignment);
        const std::size_t end = std::min(bytes, lines * (tid + 1) / nthreads * kAlignment);
        if (begin < end) fn(begin, end - begin);
    }
}
}  // namespace

std::string CpuBackend::describe() const {
    return "cpu (" + blas_description() + ", OpenMP waiting " + openmp_wait_description() + ")";
}

void* CpuBackend::allocate(std::size_t bytes) {
    // aligned_alloc needs a size that is a multiple of the alignment.
    const std::size_t rounded =
        (std::max<std::size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    void* ptr = std::aligned_alloc(kAlignment, rounded);
    if (ptr == nullptr) throw std::bad_alloc();
    return ptr;
}

void CpuBackend::deallocate(void* ptr) noexcept { std::free(ptr); }

void CpuBackend::upload(void* dst, const void* host_src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, host_src, bytes);
}

void CpuBackend::download(void* host_dst, const void* src, std::size_t bytes) {
    if (bytes) std::memcpy(host_dst, src, bytes);
}

void CpuBackend::copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0 || dst == src) return;
    auto* d = static_cast<unsigned char*>(dst);
    const auto* s = static_cast<const unsigned char*>(src);
    if (d < s + bytes && s < d + bytes) {  // overlapping: one memmove keeps it correct
        std::memmove(dst, src, bytes);
        return;
    }
    for_each_slice(bytes, [&](std::size_t offset, std::size_t length) {
        std::memcpy(d + offset, s + offset, length);
    });
}

void CpuBackend::zero(void* dst, std::size_t bytes) {
    auto* d = static_cast<unsigned char*>(dst);
    for_each_slice(
        bytes, [&](std::size_t offset, std::size_t length) { std::memset(d + offset, 0, length); });
}

}  // namespace upcycle
