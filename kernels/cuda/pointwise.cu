// Elementwise ops: tanh-GELU forward and backward, add, accumulate, scale. Specifications:
// kernels/cpu/gelu.cpp and kernels/cpu/pointwise.cpp. One thread per element in grid-stride
// loops; each element is read and written by one thread only, so out may alias an input.
// Later (bf16 step): GELU fused into the preceding GEMM's epilogue (cuBLASLt), vectorised
// float4 loads.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// The same formulas as the CPU (kernels/cpu/gelu.cpp):
//   gelu(x)  = 0.5·x·(1 + tanh(u)) = x · sigmoid(2u),  u = √(2/π)·(x + 0.044715·x³)
//   gelu'(x) = s + 2·x·s·(1 - s)·u',  s = sigmoid(2u),  u' = √(2/π)·(1 + 3·0.044715·x²)
// expf here is CUDA's full-precision expf (the CPU uses its fast_exp, within 2 ulp of it).
__global__ void gelu_forward_kernel(float* out, const float* inp, std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        const float x = inp[i];
        const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u));
    }
}

// dinp += gelu'(inp) · dout
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout,
                                     std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        const float x = inp[i];
        const float x2 = x * x;
        const float u = kSqrt2OverPi * (x + kCubic * x2 * x);
        const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x2);
        const float s = 1.0f / (1.0f + expf(-2.0f * u));
        const float grad = s + 2.0f * x * s * (1.0f - s) * du;
        dinp[i] += grad * dout[i];
    }
}

// No __restrict__ on these three: out may alias a or b (add), by contract.
__global__ void add_kernel(float* out, const float* a, const float* b, std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        out[i] = a[i] + b[i];
    }
}

__global__ void accumulate_kernel(float* y, const float* x, std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        y[i] += x[i];
    }
}

__global__ void scale_kernel(float* x, float s, std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        x[i] *= s;
    }
}

}  // namespace

void CudaBackend::gelu_forward(float* out, const float* inp, std::size_t n) {
    if (n == 0) return;
    const auto count = static_cast<std::int64_t>(n);
    gelu_forward_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(out, inp,
                                                                                      count);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::gelu_backward(float* dinp, const float* inp, const float* dout,
                                std::size_t n) {
    if (n == 0) return;
    const auto count = static_cast<std::int64_t>(n);
    gelu_backward_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(
        dinp, inp, dout, count);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::add(float* out, const float* a, const float* b, std::size_t n) {
    if (n == 0) return;
    const auto count = static_cast<std::int64_t>(n);
    add_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(out, a, b, count);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::accumulate(float* y, const float* x, std::size_t n) {
    if (n == 0) return;
    const auto count = static_cast<std::int64_t>(n);
    accumulate_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(y, x,
                                                                                    count);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::scale(float* x, float s, std::size_t n) {
    if (n == 0) return;
    const auto count = static_cast<std::int64_t>(n);
    scale_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(x, s, count);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
