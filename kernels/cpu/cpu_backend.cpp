// CpuBackend: memory, description. The ops live one per file beside this one.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/blas_setup.h"

namespace upcycle {

namespace {
// One cache line, and the width of an AVX-512 register: aligned vector loads everywhere.
constexpr std::size_t kAlignment = 64;
}  // namespace

std::string CpuBackend::describe() const { return "cpu (" + blas_description() + ")"; }

void* CpuBackend::allocate(std::size_t bytes) {
    // aligned_alloc needs a size that is a multiple of the alignment.
    const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + kAlignment - 1) /
                                kAlignment * kAlignment;
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
    if (bytes && dst != src) std::memmove(dst, src, bytes);
}

void CpuBackend::zero(void* dst, std::size_t bytes) {
    if (bytes) std::memset(dst, 0, bytes);
}

}  // namespace upcycle
