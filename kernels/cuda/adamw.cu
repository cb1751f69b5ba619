// AdamW update and the sum of squares (for gradient-norm clipping). Specifications:
// kernels/cpu/adamw.cpp and kernels/cpu/sum_squares.cpp.
//
// adamw_update: one thread per parameter with the CPU's arithmetic, operation for operation:
// the bias corrections 1/(1 - β^t) are computed on the host in double exactly as the CPU
// does and passed in as floats; the fused multiply-adds are the CPU's (explicit fmaf, the CPU
// uses FMA instructions), and division and sqrt are IEEE-rounded (nvcc's defaults
// -prec-div=true, -prec-sqrt=true). So on an FMA-capable CPU the update is bit-identical.
//
// sum_squares: deterministic double reduction over a fixed grid, whatever n is:
//  pass 1: kReduceBlocks blocks × kReduceThreads threads; thread g accumulates
//          x[g], x[g + G], x[g + 2G], … in double (G = the grid's thread count), then each
//          block adds its threads' sums by a fixed shared-memory tree into partial[block];
//  pass 2: one block adds the kReduceBlocks partials by the same tree.
// The order of additions depends only on n, never on scheduling, so the result is
// bit-identical run to run (it differs from the CPU's chunked order by rounding only).
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/adamw_step.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

constexpr int kReduceBlocks = 256;
constexpr int kReduceThreads = 256;  // a power of two (the tree halves it)

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads,
                             float* __restrict__ m, float* __restrict__ v, std::int64_t n,
                             AdamWStep s) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < n; i += stride) {
        const float g = grads[i] * s.grad_scale;
        const float mi = fmaf(s.beta1, m[i], s.one_minus_b1 * g);
        const float vi = fmaf(s.beta2, v[i], s.one_minus_b2 * g * g);
        m[i] = mi;
        v[i] = vi;
        const float m_hat = mi * s.inv_bc1;
        const float v_hat = vi * s.inv_bc2;
        const float p = params[i];
        const float update = fmaf(s.weight_decay, p, m_hat / (sqrtf(v_hat) + s.eps));
        params[i] = fmaf(-s.lr, update, p);
    }
}

// Adds the kReduceThreads values in `shared` by a fixed halving tree; the total lands in
// shared[0]. Every thread of the block must call it.
__device__ void block_tree_sum(double* shared) {
    for (int width = kReduceThreads / 2; width > 0; width /= 2) {
        __syncthreads();
        if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    }
    __syncthreads();
}

// partial[block] = Σ x² over this block's grid-stride elements (launched with exactly
// kReduceBlocks × kReduceThreads threads)
__global__ void sum_squares_partial_kernel(double* __restrict__ partial,
                                           const float* __restrict__ x, std::int64_t n) {
    __shared__ double shared[kReduceThreads];
    const std::int64_t stride = static_cast<std::int64_t>(kReduceBlocks) * kReduceThreads;
    double acc = 0.0;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
         i < n; i += stride) {
        const double value = x[i];
        acc += value * value;
    }
    shared[threadIdx.x] = acc;
    block_tree_sum(shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

// *total = Σ partial[0 .. kReduceBlocks) (one block of kReduceThreads threads)
__global__ void sum_partials_kernel(double* __restrict__ total,
                                    const double* __restrict__ partial) {
    __shared__ double shared[kReduceThreads];
    double acc = 0.0;
    for (int i = threadIdx.x; i < kReduceBlocks; i += kReduceThreads) acc += partial[i];
    shared[threadIdx.x] = acc;
    block_tree_sum(shared);
    if (threadIdx.x == 0) *total = shared[0];
}

}  // namespace

void CudaBackend::adamw_update(float* params, const float* grads, float* m, float* v,
                               std::size_t n, float lr, float beta1, float beta2, float eps,
                               float weight_decay, float grad_scale, int64_t step) {
    if (n == 0) return;
    const AdamWStep s = make_adamw_step(lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    const auto count = static_cast<std::int64_t>(n);
    adamw_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(params, grads, m,
                                                                               v, count, s);
    CUDA_CHECK(cudaGetLastError());
}

double CudaBackend::sum_squares(const float* x, std::size_t n) {
    if (n == 0) return 0.0;
    // Scratch from the caching allocator: partial[kReduceBlocks] then the total.
    CachingAllocator& allocator = state_->allocator;
    auto* scratch =
        static_cast<double*>(allocator.allocate((kReduceBlocks + 1) * sizeof(double)));
    double total = 0.0;
    try {
        double* partial = scratch;
        double* device_total = scratch + kReduceBlocks;
        sum_squares_partial_kernel<<<kReduceBlocks, kReduceThreads, 0, state_->stream>>>(
            partial, x, static_cast<std::int64_t>(n));
        CUDA_CHECK(cudaGetLastError());
        sum_partials_kernel<<<1, kReduceThreads, 0, state_->stream>>>(device_total, partial);
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaMemcpyAsync(&total, device_total, sizeof(double), cudaMemcpyDeviceToHost,
                                   state_->stream));
        CUDA_CHECK(cudaStreamSynchronize(state_->stream));
    } catch (...) {
        allocator.deallocate(scratch);
        throw;
    }
    allocator.deallocate(scratch);
    return total;
}

}  // namespace upcycle
