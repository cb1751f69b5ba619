// The sum of squares (for gradient-norm clipping). Specification: kernels/cpu/sum_squares.cpp.
//
// A deterministic double reduction over a fixed grid, whatever n is:
//  pass 1: kReduceBlocks blocks × kReduceThreads threads; thread g accumulates
//          x[g], x[g + G], x[g + 2G], … in double (G = the grid's thread count), then each
//          block adds its threads' sums by a fixed shared-memory tree into partial[block];
//  pass 2: one block adds the kReduceBlocks partials by the same tree.
// The order of additions depends only on n, never on scheduling, so the result is
// bit-identical run to run (it differs from the CPU's chunked order by rounding only).
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

constexpr int kReduceBlocks = 256;
constexpr int kReduceThreads = 256;  // a power of two (the tree halves it)

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

double CudaBackend::sum_squares(const float* x, std::size_t n) {
    if (n == 0) return 0.0;
    // Scratch from the caching allocator: partial[kReduceBlocks] then the total.
    CachingAllocator& allocator = state_->allocator;
    auto* scratch = static_cast<double*>(allocator.allocate((kReduceBlocks + 1) * sizeof(double)));
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
