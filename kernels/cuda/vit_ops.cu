// Vision ops on the GPU: patch rows from images, token assembly (class token + positions),
// its backward, and the class-token gather/scatter. Specification: kernels/cpu/vit_ops.cpp.
//
// One thread per destination element, each written by exactly one thread. The backward sums
// over the batch (dcls, dwpe) run over b in order inside each output element, exactly as the
// CPU does, so they are deterministic without atomics (and bit-identical to the CPU).
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

__device__ std::int64_t first_index() {
    return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ std::int64_t grid_stride() {
    return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

// out[r, y·p + x] = images[b, py·p + y, px·p + x] with r = b·P + i, i = py·gx + px
__global__ void patch_embed_input_kernel(float* __restrict__ out,
                                         const float* __restrict__ images, int B, int H, int W,
                                         int p) {
    const int gx = W / p, P = (H / p) * gx, pp = p * p;
    const std::int64_t total = static_cast<std::int64_t>(B) * P * pp;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const std::int64_t r = idx / pp;
        const int k = static_cast<int>(idx % pp);
        const int y = k / p, x = k % p;
        const std::int64_t b = r / P;
        const int i = static_cast<int>(r % P);
        const int py = i / gx, px = i % gx;
        out[idx] = images[b * H * W + static_cast<std::int64_t>(py * p + y) * W + px * p + x];
    }
}

// out[b,t,c] = (t == 0 ? cls[c] : patch_emb[b·P + t-1, c]) + wpe[t,c],  T = 1 + P
__global__ void assemble_tokens_kernel(float* __restrict__ out,
                                       const float* __restrict__ patch_emb,
                                       const float* __restrict__ cls,
                                       const float* __restrict__ wpe, int B, int P, int C) {
    const int T = 1 + P;
    const std::int64_t total = static_cast<std::int64_t>(B) * T * C;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const std::int64_t n = idx / C;
        const int c = static_cast<int>(idx % C);
        const std::int64_t b = n / T;
        const int t = static_cast<int>(n % T);
        const float src = t == 0 ? cls[c] : patch_emb[(b * P + t - 1) * C + c];
        out[idx] = src + wpe[static_cast<std::int64_t>(t) * C + c];
    }
}

// dpatch_emb[b·P + i, c] += dout[b, 1+i, c]
__global__ void patch_grad_kernel(float* __restrict__ dpatch_emb,
                                  const float* __restrict__ dout, int B, int P, int C) {
    const int T = 1 + P;
    const std::int64_t total = static_cast<std::int64_t>(B) * P * C;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const std::int64_t r = idx / C;
        const int c = static_cast<int>(idx % C);
        const std::int64_t b = r / P;
        const int i = static_cast<int>(r % P);
        dpatch_emb[idx] += dout[(b * T + 1 + i) * C + c];
    }
}

// dwpe[t,c] += Σ_b dout[b,t,c];  dcls[c] += Σ_b dout[b,0,c]   (b in order; either may be null)
__global__ void position_grad_kernel(float* __restrict__ dcls, float* __restrict__ dwpe,
                                     const float* __restrict__ dout, int B, int P, int C) {
    const int T = 1 + P;
    const std::int64_t total = static_cast<std::int64_t>(T) * C;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const int t = static_cast<int>(idx / C);
        const int c = static_cast<int>(idx % C);
        const bool to_cls = t == 0 && dcls != nullptr;
        float pw = dwpe ? dwpe[idx] : 0.0f;
        float pc = to_cls ? dcls[c] : 0.0f;
        for (int b = 0; b < B; ++b) {
            const float d = dout[(static_cast<std::int64_t>(b) * T + t) * C + c];
            pw += d;
            pc += d;
        }
        if (dwpe) dwpe[idx] = pw;
        if (to_cls) dcls[c] = pc;
    }
}

// out[b,c] = x[b,0,c]
__global__ void gather_class_tokens_kernel(float* __restrict__ out, const float* __restrict__ x,
                                           int B, int T, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * C;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const std::int64_t b = idx / C;
        const int c = static_cast<int>(idx % C);
        out[idx] = x[b * T * C + c];
    }
}

// dx[b,0,c] += dout[b,c]
__global__ void scatter_class_tokens_kernel(float* __restrict__ dx,
                                            const float* __restrict__ dout, int B, int T,
                                            int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * C;
    for (std::int64_t idx = first_index(); idx < total; idx += grid_stride()) {
        const std::int64_t b = idx / C;
        const int c = static_cast<int>(idx % C);
        dx[b * T * C + c] += dout[idx];
    }
}

}  // namespace

void CudaBackend::patch_embed_input(float* out, const float* images, int B, int H, int W,
                                    int p) {
    if (p <= 0) return;
    const std::int64_t total = static_cast<std::int64_t>(B) * (H / p) * (W / p) * p * p;
    if (total <= 0) return;
    patch_embed_input_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, images, B, H, W, p);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::assemble_tokens(float* out, const float* patch_emb, const float* cls,
                                  const float* wpe, int B, int P, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * (1 + P) * C;
    if (total <= 0) return;
    assemble_tokens_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, patch_emb, cls, wpe, B, P, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::assemble_tokens_backward(float* dpatch_emb, float* dcls, float* dwpe,
                                           const float* dout, int B, int P, int C) {
    const std::int64_t patch_total = static_cast<std::int64_t>(B) * P * C;
    if (dpatch_emb && patch_total > 0) {
        patch_grad_kernel<<<gpu::blocks_for(patch_total), gpu::kThreads, 0, state_->stream>>>(
            dpatch_emb, dout, B, P, C);
        CUDA_CHECK(cudaGetLastError());
    }
    const std::int64_t position_total = static_cast<std::int64_t>(1 + P) * C;
    if ((dwpe || dcls) && position_total > 0) {
        position_grad_kernel<<<gpu::blocks_for(position_total), gpu::kThreads, 0,
                               state_->stream>>>(dcls, dwpe, dout, B, P, C);
        CUDA_CHECK(cudaGetLastError());
    }
}

void CudaBackend::gather_class_tokens(float* out, const float* x, int B, int T, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * C;
    if (total <= 0) return;
    gather_class_tokens_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        out, x, B, T, C);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::scatter_class_tokens(float* dx, const float* dout, int B, int T, int C) {
    const std::int64_t total = static_cast<std::int64_t>(B) * C;
    if (total <= 0) return;
    scatter_class_tokens_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
        dx, dout, B, T, C);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
