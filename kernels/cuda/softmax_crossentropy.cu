// Fused softmax + cross-entropy over logits[N,V] on the GPU, one block per row.
// Specification: kernels/cpu/softmax_crossentropy.cpp.
//
//   pass 1: max and argmax (lowest index holding the max), the target's logit;
//   pass 2: sum = Σ_j exp(l_j - max);
//   pass 3: dlogits_j = exp(l_j - max)·(grad_scale / sum) - [j == target]·grad_scale.
// dlogits may alias logits: each pass ends in a block reduction whose __syncthreads follows
// every thread's reads, and only pass 3 writes, element j by the thread that reads it.
// A negative target marks a row to ignore (loss 0, gradient 0); others must be below V.
// Reductions: each thread walks its strided elements in order, then a butterfly shuffle
// per warp and warp 0 over the warp results; the order depends on the shapes alone.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

using gpu::DeviceScratch;
using gpu::kFullMask;
using gpu::kWarpSize;
using gpu::warp_sum;

constexpr int kThreads = 256;  // one block per row
constexpr int kWarps = kThreads / kWarpSize;

// A candidate for the maximum: larger value wins, the lower index on ties. The choice is
// commutative (indices are distinct, or equal for equal candidates), so a butterfly leaves
// the same candidate in every lane.
struct MaxArg {
    float value;
    int index;
};

__device__ MaxArg better(MaxArg a, MaxArg b) {
    if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
    return a;
}

__device__ MaxArg warp_max_arg(MaxArg m) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        MaxArg other;
        other.value = __shfl_xor_sync(kFullMask, m.value, offset);
        other.index = __shfl_xor_sync(kFullMask, m.index, offset);
        m = better(m, other);
    }
    return m;
}

// Block-wide max/argmax; every thread receives the result. Contains __syncthreads.
__device__ MaxArg block_max_arg(MaxArg m) {
    __shared__ float warp_value[kWarps];
    __shared__ int warp_index[kWarps];
    __shared__ MaxArg result;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    m = warp_max_arg(m);
    if (lane == 0) {
        warp_value[warp] = m.value;
        warp_index[warp] = m.index;
    }
    __syncthreads();
    if (warp == 0) {
        MaxArg w = lane < kWarps ? MaxArg{warp_value[lane], warp_index[lane]}
                                 : MaxArg{warp_value[0], warp_index[0]};
        w = warp_max_arg(w);
        if (lane == 0) result = w;
    }
    __syncthreads();
    return result;
}

// Block-wide sum; every thread receives the result. Contains __syncthreads.
__device__ float block_sum(float v) {
    __shared__ float warp_partial[kWarps];
    __shared__ float result;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    v = warp_sum(v);
    if (lane == 0) warp_partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < kWarps ? warp_partial[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) result = w;
    }
    __syncthreads();
    return result;
}

// No __restrict__: dlogits may alias logits.
__global__ void softmax_crossentropy_kernel(float* losses, float* dlogits, int32_t* argmax,
                                            const float* logits, const int32_t* targets, int V,
                                            float grad_scale) {
    const int n = static_cast<int>(blockIdx.x);
    const int tid = static_cast<int>(threadIdx.x);
    const float* row = logits + static_cast<std::size_t>(n) * V;
    float* drow = dlogits ? dlogits + static_cast<std::size_t>(n) * V : nullptr;
    const int32_t target = targets[n];
    const bool ignored = target < 0;  // uniform over the block

    // pass 1: max and lowest index holding it (a thread without elements offers index V,
    // beyond every real one; its value never beats a real one)
    MaxArg best{-INFINITY, V};
    for (int j = tid; j < V; j += kThreads) {
        const float x = row[j];
        if (best.index == V || x > best.value) best = MaxArg{x, j};
    }
    const float target_logit = ignored ? 0.0f : row[target];
    best = block_max_arg(best);  // after this barrier no thread reads pass-1 data again
    const float max_value = best.value;
    if (tid == 0 && argmax) argmax[n] = best.index;

    if (ignored) {
        if (tid == 0 && losses) losses[n] = 0.0f;
        if (drow) {
            for (int j = tid; j < V; j += kThreads) drow[j] = 0.0f;
        }
        return;
    }

    // pass 2: Σ exp(l - max)
    float part = 0.0f;
    for (int j = tid; j < V; j += kThreads) part += expf(row[j] - max_value);
    const float sum = block_sum(part);  // after this barrier every read of row is done
    if (tid == 0 && losses) losses[n] = max_value + logf(sum) - target_logit;

    // pass 3: the gradient, element j read and written by the same thread
    if (drow) {
        const float factor = grad_scale / sum;
        for (int j = tid; j < V; j += kThreads) {
            float g = expf(row[j] - max_value) * factor;
            if (j == target) g -= grad_scale;
            drow[j] = g;
        }
    }
}

}  // namespace

void CudaBackend::softmax_crossentropy(float* losses, float* dlogits, int32_t* argmax,
                                       const float* logits, const int32_t* targets, int N, int V,
                                       float grad_scale) {
    if (N <= 0 || V <= 0) return;
    softmax_crossentropy_kernel<<<static_cast<unsigned>(N), kThreads, 0, state_->stream>>>(
        losses, dlogits, argmax, logits, targets, V, grad_scale);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
