#pragma once
// Multi-head self-attention core on bf16 tensor cores (kernels/cuda/attention_bf16.cu): the
// Precision::BF16 path of CudaBackend::attention_forward / attention_backward. Same contract
// as those (core/backend.h): fp32 qkv, out, lse, dout, dqkv in memory; only the operands of
// the matrix products inside attention are rounded to bfloat16.

namespace upcycle {

struct CudaState;  // kernels/cuda/cuda_state.cuh

// Whether the bf16 kernels take this shape: C a multiple of H, head size hs = C/H a multiple
// of 16 (the WMMA tile) and at most 128. Other shapes run the fp32 kernels.
bool attention_bf16_supported(int C, int H);

// out[B,T,C], lse[B,H,T] from qkv[B,T,3C]; as Backend::attention_forward.
void attention_forward_bf16(CudaState& state, float* out, float* lse, const float* qkv, int B,
                            int T, int C, int H, bool causal);

// dqkv[B,T,3C] += gradient; as Backend::attention_backward.
void attention_backward_bf16(CudaState& state, float* dqkv, const float* dout, const float* qkv,
                             const float* out, const float* lse, int B, int T, int C, int H,
                             bool causal);

}  // namespace upcycle
