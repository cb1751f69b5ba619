// Linear layer in PyTorch nn.Linear layout on OpenBLAS sgemm (row-major):
//   forward   out[M,N]  = inp[M,K] · weight[N,K]^T + bias[N]
//   backward  dinp[M,K] += dout[M,N] · weight[N,K]
//             dweight[N,K] += dout^T · inp
//             dbias[N] += Σ_m dout[m,:]
// The forward writes the bias rows into out and lets sgemm accumulate on top (beta = 1):
// one pass over out, where beta = 0 plus a later bias add would be two.
#include <cblas.h>
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

namespace {
// Column slices for dbias are whole cache lines so threads never share one.
constexpr int kColumnGrain = 16;
// Below this many output elements, the bias fill is not worth a parallel region.
constexpr std::int64_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::matmul_forward(float* out, const float* inp, const float* weight,
                                const float* bias, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    float beta = 0.0f;
    if (bias) {
        const std::size_t row_bytes = static_cast<std::size_t>(N) * sizeof(float);
#pragma omp parallel for schedule(static) if (static_cast<std::int64_t>(M) * N >= kParallelMin)
        for (int m = 0; m < M; ++m) std::memcpy(out + static_cast<std::size_t>(m) * N, bias, row_bytes);
        beta = 1.0f;
    }
    if (K <= 0) {
        if (!bias) std::memset(out, 0, static_cast<std::size_t>(M) * N * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, weight, K, beta,
                out, N);
}

void CpuBackend::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    if (K > 0) {
        if (dinp) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N,
                        weight, K, 1.0f, dinp, K);
        }
        if (dweight) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, inp, K,
                        1.0f, dweight, K);
        }
    }
    if (dbias) {
        // Threads own column slices; each sums its columns over rows m = 0..M-1 in order,
        // so the result does not depend on the thread count.
        const int grains = (N + kColumnGrain - 1) / kColumnGrain;
#pragma omp parallel if (static_cast<std::int64_t>(M) * N >= kParallelMin)
        {
            const int nthreads = omp_get_num_threads();
            const int tid = omp_get_thread_num();
            const int g0 = static_cast<int>(static_cast<std::int64_t>(grains) * tid / nthreads);
            const int g1 =
                static_cast<int>(static_cast<std::int64_t>(grains) * (tid + 1) / nthreads);
            const int n0 = g0 * kColumnGrain;
            const int n1 = g1 * kColumnGrain < N ? g1 * kColumnGrain : N;
            for (int m = 0; m < M; ++m) {
                const float* row = dout + static_cast<std::size_t>(m) * N;
#pragma omp simd
                for (int n = n0; n < n1; ++n) dbias[n] += row[n];
            }
        }
    }
}

}  // namespace upcycle
