// GEMM helpers shared by matmul.cu and expert_matmul.cu (declared in gemm.cuh): cuBLAS calls
// in the backend's precision, the bias broadcast and the bias-gradient column sums, for one
// product (batches = 1) or for a batch of equally shaped products (one per expert).
//
// Bias gradient: dbias[b,n] += Σ_m dout[b,m,n], in double as the CPU does, deterministically
// in two passes (one thread per column alone would leave the GPU nearly idle: N threads, M
// serial loads):
//   1. one thread per (batch, chunk of kRowChunk rows, column) sums its rows in order into
//      its double partial (scratch [batches][chunks][N]); neighbouring threads read
//      neighbouring columns of a row (coalesced);
//   2. one thread per (batch, column) adds the partials in chunk order and adds the sum to
//      dbias.
// The CPU sums all M rows in one double; the two orders differ only in double rounding, far
// below the final float's (the results are equal after the cast in all but rare ties).
#include "kernels/cuda/gemm.cuh"

#include "core/errors.h"

namespace upcycle::gpu {

namespace {

constexpr int kRowChunk = 64;        // rows per partial sum
constexpr int kColumnThreads = 128;  // columns per block
constexpr int kMaxGridYZ = 65535;    // CUDA's limit on gridDim.y and gridDim.z

// out[i] = bias[b·bias_stride + n] for i = (b·rows + m)·N + n (grid-stride over all elements)
__global__ void fill_bias_rows_kernel(float* __restrict__ out, const float* __restrict__ bias,
                                      std::int64_t total, std::int64_t batch_elements, int N,
                                      std::int64_t bias_stride) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        out[i] = bias[(i / batch_elements) * bias_stride + i % N];
    }
}

// partials[b,chunk,n] = Σ_{m in chunk} dout[b·rows + m, n]
// grid (chunks, column blocks, B)
__global__ void column_partials_kernel(double* __restrict__ partials,
                                       const float* __restrict__ dout, int rows, int N,
                                       int chunks) {
    const int chunk = static_cast<int>(blockIdx.x);
    const int n = static_cast<int>(blockIdx.y) * kColumnThreads + static_cast<int>(threadIdx.x);
    const std::int64_t b = blockIdx.z;
    if (n >= N) return;
    const float* block = dout + b * rows * N;
    const int m0 = chunk * kRowChunk;
    const int m1 = m0 + kRowChunk < rows ? m0 + kRowChunk : rows;
    double acc = 0.0;
    for (int m = m0; m < m1; ++m) {
        acc += static_cast<double>(block[static_cast<std::int64_t>(m) * N + n]);
    }
    partials[(b * chunks + chunk) * N + n] = acc;
}

// dbias[b·bias_stride + n] += Σ_chunk partials[b,chunk,n], in chunk order
// grid (column blocks, B)
__global__ void column_partials_reduce_kernel(float* __restrict__ dbias,
                                              const double* __restrict__ partials, int chunks,
                                              int N, std::int64_t bias_stride) {
    const int n = static_cast<int>(blockIdx.x) * kColumnThreads + static_cast<int>(threadIdx.x);
    const std::int64_t b = blockIdx.y;
    if (n >= N) return;
    const double* sums = partials + b * chunks * N;
    double acc = 0.0;
    for (int chunk = 0; chunk < chunks; ++chunk) {
        acc += sums[static_cast<std::int64_t>(chunk) * N + n];
    }
    dbias[b * bias_stride + n] += static_cast<float>(acc);
}

}  // namespace

void sgemm(cublasHandle_t handle, Precision precision, cublasOperation_t trans_a,
           cublasOperation_t trans_b, int m, int n, int k, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
    CUBLAS_CHECK(cublasGemmEx(handle, trans_a, trans_b, m, n, k, &alpha, A, CUDA_R_32F, lda, B,
                              CUDA_R_32F, ldb, &beta, C, CUDA_R_32F, ldc,
                              gemm_compute_type(precision), CUBLAS_GEMM_DEFAULT));
}

void sgemm_strided_batched(cublasHandle_t handle, Precision precision,
                           cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n,
                           int k, float alpha, const float* A, int lda, long long stride_a,
                           const float* B, int ldb, long long stride_b, float beta, float* C,
                           int ldc, long long stride_c, int batches) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle, trans_a, trans_b, m, n, k, &alpha, A, CUDA_R_32F, lda, stride_a, B, CUDA_R_32F,
        ldb, stride_b, &beta, C, CUDA_R_32F, ldc, stride_c, batches,
        gemm_compute_type(precision), CUBLAS_GEMM_DEFAULT));
}

void fill_bias_rows(cudaStream_t stream, float* out, const float* bias, std::size_t bias_stride,
                    int batches, int rows, int N) {
    const std::int64_t batch_elements = static_cast<std::int64_t>(rows) * N;
    const std::int64_t total = batch_elements * batches;
    if (total <= 0) return;
    fill_bias_rows_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
        out, bias, total, batch_elements, N, static_cast<std::int64_t>(bias_stride));
    CUDA_CHECK(cudaGetLastError());
}

void add_column_sums(CudaState& state, float* dbias, std::size_t bias_stride, const float* dout,
                     int batches, int rows, int N) {
    if (batches <= 0 || rows <= 0 || N <= 0) return;  // nothing to add
    const int chunks = (rows + kRowChunk - 1) / kRowChunk;
    const int column_blocks = (N + kColumnThreads - 1) / kColumnThreads;
    UPCYCLE_ASSERT(column_blocks <= kMaxGridYZ && batches <= kMaxGridYZ,
                   "add_column_sums: too many columns or batches for one grid");
    DeviceScratch partials(state.allocator, static_cast<std::size_t>(batches) * chunks * N *
                                                sizeof(double));
    double* sums = static_cast<double*>(partials.data());
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(column_blocks),
                    static_cast<unsigned>(batches));
    column_partials_kernel<<<grid, kColumnThreads, 0, state.stream>>>(sums, dout, rows, N,
                                                                      chunks);
    CUDA_CHECK(cudaGetLastError());
    const dim3 reduce_grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(batches));
    column_partials_reduce_kernel<<<reduce_grid, kColumnThreads, 0, state.stream>>>(
        dbias, sums, chunks, N, static_cast<std::int64_t>(bias_stride));
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle::gpu
