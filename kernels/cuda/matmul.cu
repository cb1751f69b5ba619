// Linear layer in PyTorch nn.Linear layout on cuBLAS (fp32). Specification:
// kernels/cpu/matmul.cpp.
//   forward   out[M,N]  = inp[M,K] · weight[N,K]^T + bias[N]
//   backward  dinp[M,K] += dout[M,N] · weight[N,K]
//             dweight[N,K] += dout^T · inp
//             dbias[N] += Σ_m dout[m,:]
//
// Row-major vs cuBLAS's column-major. A row-major [R,S] array with leading dimension S is,
// byte for byte, the column-major [S×R] array Xᵀ with ld = S. So every row-major product
// C = A·B is issued as the column-major product Cᵀ = Bᵀ·Aᵀ, whose operands are the very
// same buffers read as column-major:
//
//   forward:  out[M,N] = inp·Wᵀ  ⇔  outᵀ[N×M] = W[N×K] · inpᵀ[K×M]
//             W:    the buffer is column-major Wᵀ [K×N] ld K, so op = T gives W [N×K]
//             inpᵀ: the buffer is column-major inpᵀ [K×M] ld K, op = N
//             → gemm(T, N, m=N, n=M, k=K, A=weight lda=K, B=inp ldb=K, C=out ldc=N)
//
//   dinp:     dinp[M,K] += dout·W  ⇔  dinpᵀ[K×M] += Wᵀ[K×N] · doutᵀ[N×M]
//             Wᵀ:    the weight buffer as column-major [K×N] ld K, op = N
//             doutᵀ: the dout buffer as column-major [N×M] ld N, op = N
//             → gemm(N, N, m=K, n=M, k=N, A=weight lda=K, B=dout ldb=N, β=1, C=dinp ldc=K)
//
//   dweight:  dW[N,K] += doutᵀ·inp  ⇔  dWᵀ[K×N] += inpᵀ[K×M] · dout[M×N]
//             inpᵀ: the inp buffer as column-major [K×M] ld K, op = N
//             dout: the dout buffer is column-major doutᵀ [N×M] ld N, so op = T gives
//                   dout [M×N]
//             → gemm(N, T, m=K, n=N, k=M, A=inp lda=K, B=dout ldb=N, β=1, C=dweight ldc=K)
//
// Precision (gemm.cuh): cublasGemmEx with CUBLAS_COMPUTE_32F and the handle in
// CUBLAS_DEFAULT_MATH is true fp32 (no TF32 tensor-core rounding), so results match the CPU
// within summation-order rounding; BF16 uses CUBLAS_COMPUTE_32F_FAST_16BF. Determinism:
// cuBLAS gives bit-identical results run to run for the same shapes on the same GPU model
// and toolkit when one handle works on one stream (our case).
//
// The bias is written into out first and the GEMM accumulates on top (β = 1), as on the CPU.
// dbias is a deterministic two-pass column sum in double (gemm.cu).
// Later (bf16 step): cuBLASLt with the bias (and GELU) fused into the GEMM epilogue, and
// the dbias reduction fused via CUBLASLT_EPILOGUE_BGRADB.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"
#include "kernels/cuda/gemm.cuh"

namespace upcycle {

void CudaBackend::matmul_forward(float* out, const float* inp, const float* weight,
                                 const float* bias, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    const std::int64_t total = static_cast<std::int64_t>(M) * N;
    float beta = 0.0f;
    if (bias) {
        gpu::fill_bias_rows(state_->stream, out, bias, 0, 1, M, N);
        beta = 1.0f;
    }
    if (K <= 0) {  // an empty product: out is the bias, or zeros
        if (!bias) {
            CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(total) * sizeof(float),
                                       state_->stream));
        }
        return;
    }
    gpu::sgemm(state_->cublas, precision_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, weight, K,
               inp, K, beta, out, N);
}

void CudaBackend::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                  const float* inp, const float* weight, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    if (K > 0) {
        if (dinp) {
            gpu::sgemm(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, 1.0f,
                       weight, K, dout, N, 1.0f, dinp, K);
        }
        if (dweight) {
            gpu::sgemm(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, 1.0f,
                       inp, K, dout, N, 1.0f, dweight, K);
        }
    }
    if (dbias) gpu::add_column_sums(*state_, dbias, 0, dout, 1, M, N);
}

}  // namespace upcycle
