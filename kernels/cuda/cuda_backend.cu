// CudaBackend: device selection, stream and cuBLAS handle, the caching allocator, memory
// transfers and the description. The ops live one concern per .cu file beside this one.
#include "kernels/cuda/cuda_backend.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/errors.h"
#include "kernels/cuda/cuda_state.cuh"
#include "kernels/cuda/device_peaks.h"

namespace upcycle {

// ---- errors ---------------------------------------------------------------------------------

[[noreturn]] void cublas_failed(cublasStatus_t status, const char* statement, const char* file,
                                int line) {
    throw std::runtime_error(std::string("cuBLAS error: ") + cublasGetStatusString(status) +
                             " in " + statement + " at " + file + ":" + std::to_string(line));
}

// ---- caching allocator ------------------------------------------------------------------------

namespace {
// Block sizes are multiples of this (cudaMalloc aligns to at least 256 bytes).
constexpr std::size_t kBlockGranule = 256;
// A cached block is reused for a request of at least 1/kMaxWaste of its size; a smaller
// request gets a fresh block rather than pinning a much larger one.
constexpr std::size_t kMaxWaste = 2;

std::size_t round_block(std::size_t bytes) {
    if (bytes == 0) bytes = 1;  // allocate(0) still returns a distinct, valid pointer
    return (bytes + kBlockGranule - 1) / kBlockGranule * kBlockGranule;
}
}  // namespace

CachingAllocator::~CachingAllocator() {
    // Errors are ignored here: a destructor must not throw, and at process exit the driver may
    // already be shutting down. Blocks still in use (a tensor outliving its backend) are freed
    // too: the device memory belongs to this allocator.
    for (auto& [size, ptr] : free_) cudaFree(ptr);
    for (auto& [ptr, size] : in_use_) cudaFree(ptr);
    cudaGetLastError();
}

void* CachingAllocator::allocate(std::size_t bytes) {
    const std::size_t size = round_block(bytes);
    // Best fit: the smallest cached block that is large enough.
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first <= size * kMaxWaste) {
        const std::size_t block = it->first;
        void* ptr = it->second;
        free_.erase(it);
        cached_bytes_ -= block;
        in_use_.emplace(ptr, block);
        in_use_bytes_ += block;
        return ptr;
    }
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // clear it, so that a later launch check does not report it
        // Out of memory: give every cached block back to the driver and try once more.
        // (cudaFree synchronizes the device, so no queued kernel still uses these blocks.)
        while (!free_.empty()) {
            const auto first = free_.begin();
            void* cached = first->second;
            cached_bytes_ -= first->first;
            free_.erase(first);
            CUDA_CHECK(cudaFree(cached));
        }
        status = cudaMalloc(&ptr, size);
    }
    if (status != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error("CUDA out of memory: cudaMalloc of " + std::to_string(size) +
                                 " bytes failed (" + cudaGetErrorString(status) + "); " +
                                 std::to_string(in_use_bytes_) + " bytes in use");
    }
    in_use_.emplace(ptr, size);
    in_use_bytes_ += size;
    return ptr;
}

void CachingAllocator::deallocate(void* ptr) noexcept {
    if (ptr == nullptr) return;
    const auto it = in_use_.find(ptr);
    if (it == in_use_.end()) {
        // A pointer this allocator never handed out: a programming error that would corrupt
        // the cache if ignored, and deallocate cannot throw.
        std::fprintf(stderr, "upcycle: CachingAllocator::deallocate of unknown pointer %p\n",
                     ptr);
        std::abort();
    }
    const std::size_t block = it->second;
    in_use_.erase(it);
    in_use_bytes_ -= block;
    // All work runs on one stream, so a later allocation that reuses this block queues its
    // work after every kernel that still reads or writes it: no event is needed.
    free_.emplace(block, ptr);
    cached_bytes_ += block;
}

// ---- backend ------------------------------------------------------------------------------

CudaBackend::CudaBackend(int device_index) : state_(std::make_unique<CudaState>()) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        cudaGetLastError();  // no driver or no device: clear the error
        throw UserError("", "--device",
                        std::string("no CUDA device is usable (") + cudaGetErrorString(status) +
                            "); use --device cpu");
    }
    if (count == 0) throw UserError("", "--device", "no CUDA device is visible; use --device cpu");
    if (device_index < 0 || device_index >= count) {
        throw UserError("", "--device",
                        "CUDA device " + std::to_string(device_index) + " does not exist (" +
                            std::to_string(count) + " visible: cuda:0 .. cuda:" +
                            std::to_string(count - 1) + ")");
    }
    CudaState& s = *state_;
    s.device = device_index;
    CUDA_CHECK(cudaSetDevice(device_index));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
    s.name = std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
             std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 30) +
             " GiB)";
    try {
        // A non-blocking stream: no implicit synchronization with the legacy default stream.
        CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
        CUBLAS_CHECK(cublasCreate(&s.cublas));
        CUBLAS_CHECK(cublasSetStream(s.cublas, s.stream));
        // No TF32: the default math mode never uses it for fp32, and every GEMM also names
        // CUBLAS_COMPUTE_32F explicitly (kernels/cuda/matmul.cu), so fp32 GEMMs round like
        // the CPU's. (NVIDIA_TF32_OVERRIDE can only disable TF32, never force it.)
        CUBLAS_CHECK(cublasSetMathMode(s.cublas, CUBLAS_DEFAULT_MATH));
    } catch (...) {
        if (s.cublas) cublasDestroy(s.cublas);
        if (s.stream) cudaStreamDestroy(s.stream);
        throw;
    }
}

CudaBackend::~CudaBackend() {
    // No throwing here: errors are ignored (the process may be unwinding from one already).
    cudaSetDevice(state_->device);
    if (state_->stream) cudaStreamSynchronize(state_->stream);
    if (state_->cublas) cublasDestroy(state_->cublas);
    if (state_->stream) cudaStreamDestroy(state_->stream);
    cudaGetLastError();
    // state_ goes next; its allocator frees every block.
}

double CudaBackend::peak_flops(Precision precision) const {
    const auto peaks = find_device_peaks(state_->name);
    if (!peaks) return 0;
    return precision == Precision::BF16 ? peaks->bf16_flops : peaks->fp32_flops;
}

std::string CudaBackend::describe() const {
    return "cuda:" + std::to_string(state_->device) + " " + state_->name + ", " +
           precision_name(precision_) + " GEMMs";
}

void* CudaBackend::allocate(std::size_t bytes) { return state_->allocator.allocate(bytes); }

void CudaBackend::deallocate(void* ptr) noexcept { state_->allocator.deallocate(ptr); }

void CudaBackend::upload(void* dst, const void* host_src, std::size_t bytes) {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, state_->stream));
    // The caller may change or free its (pageable) host buffer as soon as this returns: wait
    // for the copy. (Pinned staging buffers would let uploads overlap compute; later.)
    CUDA_CHECK(cudaStreamSynchronize(state_->stream));
}

void CudaBackend::download(void* host_dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, state_->stream));
    CUDA_CHECK(cudaStreamSynchronize(state_->stream));
}

void CudaBackend::copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0 || dst == src) return;
    const auto* d = static_cast<const unsigned char*>(dst);
    const auto* s = static_cast<const unsigned char*>(src);
    if (d < s + bytes && s < d + bytes) {
        // Overlapping ranges (cudaMemcpy leaves them undefined): go through a temporary,
        // as memmove would. Stream order makes the temporary safe to free right away.
        void* tmp = state_->allocator.allocate(bytes);
        try {
            CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice,
                                       state_->stream));
            CUDA_CHECK(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice,
                                       state_->stream));
        } catch (...) {
            state_->allocator.deallocate(tmp);
            throw;
        }
        state_->allocator.deallocate(tmp);
        return;
    }
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, state_->stream));
}

void CudaBackend::zero(void* dst, std::size_t bytes) {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, state_->stream));
}

void CudaBackend::synchronize() { CUDA_CHECK(cudaStreamSynchronize(state_->stream)); }

void* CudaBackend::stream_handle() const { return state_->stream; }

int CudaBackend::device_index() const { return state_->device; }

}  // namespace upcycle
