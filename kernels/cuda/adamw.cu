// AdamW update. Specification: kernels/cpu/adamw.cpp.
//
// One thread per parameter with the CPU's arithmetic, operation for operation: the bias
// corrections 1/(1 - β^t) are computed on the host in double exactly as the CPU does and
// passed in as floats; the fused multiply-adds are the CPU's (explicit fmaf, the CPU uses FMA
// instructions), and division and sqrt are IEEE-rounded (nvcc's defaults -prec-div=true,
// -prec-sqrt=true). So on an FMA-capable CPU the update is bit-identical.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/adamw_step.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads,
                             float* __restrict__ m, float* __restrict__ v, std::int64_t n,
                             AdamWStep s) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
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

}  // namespace

void CudaBackend::adamw_update(float* params, const float* grads, float* m, float* v, std::size_t n,
                               float lr, float beta1, float beta2, float eps, float weight_decay,
                               float grad_scale, int64_t step) {
    if (n == 0) return;
    const AdamWStep s = make_adamw_step(lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    const auto count = static_cast<std::int64_t>(n);
    adamw_kernel<<<gpu::blocks_for(count), gpu::kThreads, 0, state_->stream>>>(params, grads, m, v,
                                                                               count, s);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
