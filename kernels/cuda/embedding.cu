// Token + position embedding, forward and backward. Specification: kernels/cpu/embedding.cpp.
//
// The backward is deterministic without atomics, and adds in exactly the CPU's order (so it
// is bit-identical to it): every gradient element is owned by one thread, which adds its
// contributions one at a time straight into the gradient, in token order.
//  - dwpe: one thread per (t, c), adding dout[b,t,c] for b = 0..B-1.
//  - dwte: one thread per channel c, walking all B·T positions in order and adding
//    dout[n,c] into dwte[tokens[n],c]. Two positions with the same token hit the same
//    element, so only the channel dimension can be split without races or atomics. The cost:
//    only C threads (a few warps), each doing B·T dependent read-modify-writes, i.e. about
//    B·T global-memory latencies (~10 ms for B·T = 16k). Acceptable for now; the fast
//    deterministic form (later) sorts positions by token (a stable counting sort) and gives
//    each (token, c) its own thread summing its positions in order.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

// out[n,c] = wte[tokens[n],c] + wpe[n mod T,c], one thread per element
__global__ void embedding_forward_kernel(float* __restrict__ out,
                                         const int32_t* __restrict__ tokens,
                                         const float* __restrict__ wte,
                                         const float* __restrict__ wpe, std::int64_t total,
                                         int T, int C) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const std::int64_t n = i / C, c = i % C;
        const std::int64_t t = n % T;
        out[i] = wte[static_cast<std::int64_t>(tokens[n]) * C + c] + wpe[t * C + c];
    }
}

// dwpe[t,c] += dout[b,t,c] for b = 0..B-1 in order, one thread per (t, c)
__global__ void embedding_backward_wpe_kernel(float* __restrict__ dwpe,
                                              const float* __restrict__ dout, int B, int T,
                                              int C) {
    const std::int64_t total = static_cast<std::int64_t>(T) * C;  // one b-slice of dout
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        float acc = dwpe[i];
        for (int b = 0; b < B; ++b) acc += dout[static_cast<std::int64_t>(b) * total + i];
        dwpe[i] = acc;
    }
}

// dwte[tokens[n],c] += dout[n,c] for n = 0..N-1 in order, one thread per channel c
__global__ void embedding_backward_wte_kernel(float* __restrict__ dwte,
                                              const float* __restrict__ dout,
                                              const int32_t* __restrict__ tokens,
                                              std::int64_t N, int C) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         c < C; c += stride) {
        for (std::int64_t n = 0; n < N; ++n) {
            // The same thread may revisit this element later in the loop (a repeated token);
            // its own earlier store is visible to its own later load.
            dwte[static_cast<std::int64_t>(tokens[n]) * C + c] += dout[n * C + c];
        }
    }
}

}  // namespace

void CudaBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                    const float* wpe, int B, int T, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * T * C;
    if (total <= 0) return;
    embedding_forward_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, tokens, wte, wpe, total, T, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::embedding_backward(float* dwte, float* dwpe, const float* dout,
                                     const int32_t* tokens, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    if (dwte) {
        // Threads per block small enough that C = 768 still spreads over several SMs.
        constexpr int kWteThreads = 64;
        embedding_backward_wte_kernel<<<gpu::blocks_for(C, kWteThreads), kWteThreads, 0,
                                        state_->stream>>>(
            dwte, dout, tokens, static_cast<std::int64_t>(B) * T, C);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dwpe) {
        const std::int64_t total = static_cast<std::int64_t>(T) * C;
        embedding_backward_wpe_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0,
                                        state_->stream>>>(dwpe, dout, B, T, C);
        CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace upcycle
