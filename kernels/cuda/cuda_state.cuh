#pragma once
// What every CUDA op needs: the backend's stream, its cuBLAS handle and its allocator.
// Each op's .cu file includes this and reaches the state through cuda_state(backend).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>

#include "kernels/cuda/cuda_check.cuh"

namespace upcycle {

// Caching allocator: freed blocks are kept by size and handed out again, so a training step
// that allocates the same sizes every time does no cudaMalloc after the first step. Blocks
// are rounded up to 256 bytes (cudaMalloc's alignment is at least that).
class CachingAllocator {
public:
    CachingAllocator() = default;
    ~CachingAllocator();
    CachingAllocator(const CachingAllocator&) = delete;
    CachingAllocator& operator=(const CachingAllocator&) = delete;
    void* allocate(std::size_t bytes);
    void deallocate(void* ptr) noexcept;
    std::size_t bytes_in_use() const { return in_use_bytes_; }
    std::size_t bytes_cached() const { return cached_bytes_; }

private:
    std::multimap<std::size_t, void*> free_;         // size → block
    std::unordered_map<void*, std::size_t> in_use_;  // block → size
    std::size_t in_use_bytes_ = 0, cached_bytes_ = 0;
};

struct CudaState {
    int device = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    CachingAllocator allocator;
    std::string name;  // "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)"
};

// Launch helpers shared by the op files (a namespace of their own, so that helpers local to
// one .cu file never collide with them; not `cuda`, which would shadow libcu++'s ::cuda).
namespace gpu {

constexpr int kThreads = 256;                  // threads per block of elementwise kernels
constexpr std::int64_t kMaxBlocks = 1 << 16;   // grid-stride loops cover the rest

// Blocks for a grid-stride loop over n elements with `threads` per block: enough to cover n,
// capped at kMaxBlocks; at least 1 (a launch with 0 blocks is an error).
inline unsigned blocks_for(std::int64_t n, int threads = kThreads) {
    const std::int64_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < kMaxBlocks ? blocks : kMaxBlocks));
}

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the 32 lanes by butterfly shuffles; every lane receives the same value, and the
// order of additions is fixed (deterministic).
__device__ inline float warp_sum(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(kFullMask, v, offset);
    }
    return v;
}

// Maximum over the 32 lanes by butterfly shuffles; every lane receives it.
__device__ inline float warp_max(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    }
    return v;
}

// Scratch device memory from the backend's caching allocator, returned on scope exit.
// Stream-ordered reuse is safe: every kernel runs on the backend's one stream.
class DeviceScratch {
public:
    DeviceScratch(CachingAllocator& allocator, std::size_t bytes)
        : allocator_(allocator), ptr_(allocator.allocate(bytes)) {}
    ~DeviceScratch() { allocator_.deallocate(ptr_); }
    DeviceScratch(const DeviceScratch&) = delete;
    DeviceScratch& operator=(const DeviceScratch&) = delete;
    float* floats() const { return static_cast<float*>(ptr_); }
    void* data() const { return ptr_; }

private:
    CachingAllocator& allocator_;
    void* ptr_;
};

}  // namespace gpu

}  // namespace upcycle

#define CUBLAS_CHECK(statement)                                                             \
    do {                                                                                    \
        const cublasStatus_t upcycle_cublas_status_ = (statement);                          \
        if (upcycle_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                \
            ::upcycle::cublas_failed(upcycle_cublas_status_, #statement, __FILE__, __LINE__); \
    } while (0)

namespace upcycle {
[[noreturn]] void cublas_failed(cublasStatus_t status, const char* statement, const char* file,
                                int line);
}  // namespace upcycle
