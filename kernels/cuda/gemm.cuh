#pragma once
// GEMM helpers shared by the linear layer (matmul.cu) and the experts' GEMMs
// (expert_matmul.cu): the cuBLAS calls with the backend's precision, the bias broadcast and
// the deterministic bias-gradient reduction, each for one product or for a batch of equally
// shaped products at fixed strides (one per expert). Defined in gemm.cu.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle::gpu {

// The cuBLAS compute type of a precision. FP32: CUBLAS_COMPUTE_32F, true fp32 (the handle
// stays in CUBLAS_DEFAULT_MATH, so no TF32). BF16: cuBLAS rounds both operands to bf16 and
// accumulates in fp32 on the tensor cores, which is what the CPU's bf16 emulation specifies.
inline cublasComputeType_t gemm_compute_type(Precision precision) {
    return precision == Precision::BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
}

// C = α·op(A)·op(B) + β·C in column-major terms, fp32 storage (matmul.cu explains how the
// row-major products map onto it).
void sgemm(cublasHandle_t handle, Precision precision, cublasOperation_t trans_a,
           cublasOperation_t trans_b, int m, int n, int k, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// The same product for `batches` operand sets: set b uses A + b·stride_a, B + b·stride_b and
// C + b·stride_c (strides in floats). One cublasGemmStridedBatchedEx call.
void sgemm_strided_batched(cublasHandle_t handle, Precision precision,
                           cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n,
                           int k, float alpha, const float* A, int lda, long long stride_a,
                           const float* B, int ldb, long long stride_b, float beta, float* C,
                           int ldc, long long stride_c, int batches);

// out[b,m,:] = bias[b·bias_stride + :] for b < batches, m < rows; out is [batches·rows, N].
void fill_bias_rows(cudaStream_t stream, float* out, const float* bias, std::size_t bias_stride,
                    int batches, int rows, int N);

// dbias[b·bias_stride + n] += Σ_{m < rows} dout[b·rows + m, n] for b < batches (dout is
// [batches·rows, N]); summed in double in a fixed order (deterministic; see gemm.cu).
void add_column_sums(CudaState& state, float* dbias, std::size_t bias_stride, const float* dout,
                     int batches, int rows, int N);

}  // namespace upcycle::gpu
