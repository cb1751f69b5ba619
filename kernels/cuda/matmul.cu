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
// Precision: cublasGemmEx with CUBLAS_COMPUTE_32F and the handle in CUBLAS_DEFAULT_MATH is
// true fp32 (no TF32 tensor-core rounding), so results match the CPU within summation-order
// rounding. Determinism: cuBLAS gives bit-identical results run to run for the same shapes
// on the same GPU model and toolkit when one handle works on one stream (our case).
//
// The bias is written into out first and the GEMM accumulates on top (β = 1), as on the CPU.
// Later (bf16 step): cuBLASLt with the bias (and GELU) fused into the GEMM epilogue, and
// the dbias reduction fused via CUBLASLT_EPILOGUE_BGRADB.
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

// out[m,n] = bias[n] for all m (grid-stride over the M·N elements)
__global__ void fill_bias_rows_kernel(float* __restrict__ out, const float* __restrict__ bias,
                                      std::int64_t total, int N) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        out[i] = bias[i % N];
    }
}

// dbias[n] += Σ_m dout[m,n], in double as the CPU does, deterministically in two passes
// (one thread per column alone would leave the GPU nearly idle: N threads, M serial loads):
//   1. one thread per (chunk of kRowChunk rows, column) sums its rows in order into its
//      double partial (scratch [chunks][N]); neighbouring threads read neighbouring columns
//      of a row (coalesced);
//   2. one thread per column adds the partials in chunk order and adds the sum to dbias.
// The CPU sums all M rows in one double; the two orders differ only in double rounding, far
// below the final float's (the results are equal after the cast in all but rare ties).
constexpr int kRowChunk = 64;          // rows per partial sum
constexpr int kColumnThreads = 128;    // columns per block

__global__ void column_partials_kernel(double* __restrict__ partials,
                                       const float* __restrict__ dout, int M, int N) {
    const int chunk = static_cast<int>(blockIdx.x);
    const int n = static_cast<int>(blockIdx.y) * kColumnThreads + static_cast<int>(threadIdx.x);
    if (n >= N) return;
    const int m0 = chunk * kRowChunk;
    const int m1 = m0 + kRowChunk < M ? m0 + kRowChunk : M;
    double acc = 0.0;
    for (int m = m0; m < m1; ++m) acc += static_cast<double>(dout[static_cast<std::int64_t>(m) * N + n]);
    partials[static_cast<std::int64_t>(chunk) * N + n] = acc;
}

__global__ void column_partials_reduce_kernel(float* __restrict__ dbias,
                                              const double* __restrict__ partials, int chunks,
                                              int N) {
    const int n = static_cast<int>(blockIdx.x) * kColumnThreads + static_cast<int>(threadIdx.x);
    if (n >= N) return;
    double acc = 0.0;
    for (int chunk = 0; chunk < chunks; ++chunk) acc += partials[static_cast<std::int64_t>(chunk) * N + n];
    dbias[n] += static_cast<float>(acc);
}

// C = α·op(A)·op(B) + β·C in column-major terms, fp32 storage. FP32: fp32 compute (no
// TF32). BF16: cuBLAS rounds A and B to bf16 and runs the tensor cores with fp32
// accumulation (CUBLAS_COMPUTE_32F_FAST_16BF), which is what the CPU's bf16 emulation
// specifies.
void sgemm(cublasHandle_t handle, Precision precision, cublasOperation_t trans_a,
           cublasOperation_t trans_b, int m, int n, int k, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
    const cublasComputeType_t compute =
        precision == Precision::BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(handle, trans_a, trans_b, m, n, k, &alpha, A, CUDA_R_32F, lda, B,
                              CUDA_R_32F, ldb, &beta, C, CUDA_R_32F, ldc, compute,
                              CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void CudaBackend::matmul_forward(float* out, const float* inp, const float* weight,
                                 const float* bias, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    const std::int64_t total = static_cast<std::int64_t>(M) * N;
    float beta = 0.0f;
    if (bias) {
        fill_bias_rows_kernel<<<gpu::blocks_for(total), gpu::kThreads, 0, state_->stream>>>(
            out, bias, total, N);
        CUDA_CHECK(cudaGetLastError());
        beta = 1.0f;
    }
    if (K <= 0) {  // an empty product: out is the bias, or zeros
        if (!bias) {
            CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(total) * sizeof(float),
                                       state_->stream));
        }
        return;
    }
    sgemm(state_->cublas, precision_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, weight, K, inp,
          K, beta, out, N);
}

void CudaBackend::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                  const float* inp, const float* weight, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    if (K > 0) {
        if (dinp) {
            sgemm(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, 1.0f, weight,
                  K, dout, N, 1.0f, dinp, K);
        }
        if (dweight) {
            sgemm(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, 1.0f, inp, K,
                  dout, N, 1.0f, dweight, K);
        }
    }
    if (dbias) {
        const int chunks = (M + kRowChunk - 1) / kRowChunk;
        const int column_blocks = (N + kColumnThreads - 1) / kColumnThreads;
        gpu::DeviceScratch partials(state_->allocator,
                                    static_cast<std::size_t>(chunks) * N * sizeof(double));
        double* sums = static_cast<double*>(partials.data());
        const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(column_blocks));
        column_partials_kernel<<<grid, kColumnThreads, 0, state_->stream>>>(sums, dout, M, N);
        CUDA_CHECK(cudaGetLastError());
        column_partials_reduce_kernel<<<static_cast<unsigned>(column_blocks), kColumnThreads, 0,
                                        state_->stream>>>(dbias, sums, chunks, N);
        CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace upcycle
