// The experts' linear layers on cuBLAS: one weight per expert at a fixed stride
// (W_e = weight + e·weight_stride [N,K], b_e = bias + e·bias_stride [N]) applied to the rows
// each expert owns. Specification: kernels/cpu/expert_matmul.cpp.
//   forward   out[rows of e] = inp[rows of e] · W_e^T + b_e
//   backward  dinp += dout · W_e;  dW_e += doutᵀ · inp;  db_e += Σ_rows dout   (accumulate)
// Precision and the row-major → column-major mapping are those of matmul.cu (gemm.cuh).
//
// Padded layout (g.rows_per_expert = P > 0, R = E·P rows): expert e's rows are the block
// [e·P, (e+1)·P) and every block is multiplied whole, padding included, so the shapes are
// static and nothing is read back (offset and count stay on the device). Each product is
// one cublasGemmStridedBatchedEx over the E experts, batch e being matmul.cu's call for the
// [P,K] block of expert e:
//   forward  gemm(T, N, m=N, n=P, k=K, A=W_e lda=K, B=inp_e ldb=K, C=out_e ldc=N)
//            strides A weight_stride, B P·K, C P·N
//   dinp     gemm(N, N, m=K, n=P, k=N, A=W_e lda=K, B=dout_e ldb=N, β=1, C=dinp_e ldc=K)
//            strides A weight_stride, B P·N, C P·K
//   dweight  gemm(N, T, m=K, n=N, k=P, A=inp_e lda=K, B=dout_e ldb=N, β=1, C=dW_e ldc=K)
//            strides A P·K, B P·N, C weight_stride (the gradient buffer mirrors the weights)
//   dbias    the column sums of each whole [P,N] block of dout (gemm.cu's deterministic
//            two-pass double reduction, batched over experts), added at b_e's stride.
// Padding rows: the forward writes them the bias plus the product of whatever inp holds
// there (zeros from gather_rows): finite values nothing reads. The backward relies on the
// contract that dout is zero there, so those rows add exactly 0 to dW_e and db_e, and their
// dinp rows receive + 0.
//
// Compact layout (rows_per_expert = 0; on this backend topk without a capacity): the
// boundaries move with every batch, so offset[E+1] is downloaded (one synchronisation,
// allowed on this path) and each non-empty expert runs through matmul_forward /
// matmul_backward, which gives exactly the linear layer's bias, dbias and precision
// handling. The rows from offset[E] on (padding, if a capacity dropped some) get zeros in
// the forward. (Not cublasGemmGroupedBatchedEx: it takes device arrays of per-expert
// pointers, one more upload per call, for a path off the capacity-limited hot path.)
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"
#include "kernels/cuda/gemm.cuh"

namespace upcycle {

namespace {

// The first row of each expert and one past the last row (E+1 entries), from the device.
std::vector<int32_t> expert_offsets(Backend& backend, const ExpertGroups& g) {
    std::vector<int32_t> offset(static_cast<std::size_t>(g.E) + 1);
    backend.download(offset.data(), g.offset, offset.size() * sizeof(int32_t));
    return offset;
}

void check_padded(const ExpertGroups& g) {
    UPCYCLE_ASSERT(
        static_cast<std::int64_t>(g.rows) == static_cast<std::int64_t>(g.E) * g.rows_per_expert,
        "padded expert groups must have E·P rows");
}

}  // namespace

void CudaBackend::expert_matmul_forward(float* out, const float* inp, const float* weight,
                                        std::size_t weight_stride, const float* bias,
                                        std::size_t bias_stride, const ExpertGroups& g, int K,
                                        int N) {
    if (g.E <= 0 || N <= 0) return;
    if (g.rows_per_expert == 0) {
        const std::vector<int32_t> offset = expert_offsets(*this, g);
        for (int e = 0; e < g.E; ++e) {
            const int M = offset[e + 1] - offset[e];
            if (M <= 0) continue;
            const std::size_t first = static_cast<std::size_t>(offset[e]);
            matmul_forward(out + first * N, inp + first * K, weight + e * weight_stride,
                           bias ? bias + e * bias_stride : nullptr, M, K, N);
        }
        const std::size_t used = static_cast<std::size_t>(offset[g.E]);
        if (static_cast<std::size_t>(g.rows) > used) {  // trailing padding rows
            CUDA_CHECK(cudaMemsetAsync(
                out + used * N, 0, (static_cast<std::size_t>(g.rows) - used) * N * sizeof(float),
                state_->stream));
        }
        return;
    }
    check_padded(g);
    const int P = g.rows_per_expert;
    float beta = 0.0f;
    if (bias) {
        gpu::fill_bias_rows(state_->stream, out, bias, bias_stride, g.E, P, N);
        beta = 1.0f;
    }
    if (K <= 0) {  // an empty product: out is the bias, or zeros
        if (!bias) {
            CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(g.rows) * N * sizeof(float),
                                       state_->stream));
        }
        return;
    }
    const long long in_block = static_cast<long long>(P) * K;   // floats per [P,K] block
    const long long out_block = static_cast<long long>(P) * N;  // floats per [P,N] block
    gpu::sgemm_strided_batched(state_->cublas, precision_, CUBLAS_OP_T, CUBLAS_OP_N, N, P, K, 1.0f,
                               weight, K, static_cast<long long>(weight_stride), inp, K, in_block,
                               beta, out, N, out_block, g.E);
}

void CudaBackend::expert_matmul_backward(float* dinp, float* dweight, float* dbias,
                                         const float* dout, const float* inp, const float* weight,
                                         std::size_t weight_stride, std::size_t bias_stride,
                                         const ExpertGroups& g, int K, int N) {
    if (g.E <= 0 || N <= 0) return;
    if (g.rows_per_expert == 0) {
        const std::vector<int32_t> offset = expert_offsets(*this, g);
        for (int e = 0; e < g.E; ++e) {
            const int M = offset[e + 1] - offset[e];
            if (M <= 0) continue;
            const std::size_t first = static_cast<std::size_t>(offset[e]);
            matmul_backward(dinp ? dinp + first * K : nullptr,
                            dweight ? dweight + e * weight_stride : nullptr,
                            dbias ? dbias + e * bias_stride : nullptr, dout + first * N,
                            inp + first * K, weight + e * weight_stride, M, K, N);
        }
        return;
    }
    check_padded(g);
    // one batched call writes every expert's gradient block: they must not overlap
    UPCYCLE_ASSERT(g.E == 1 || !dweight || weight_stride >= static_cast<std::size_t>(N) * K,
                   "expert weight gradients overlap (weight_stride < N·K)");
    UPCYCLE_ASSERT(g.E == 1 || !dbias || bias_stride >= static_cast<std::size_t>(N),
                   "expert bias gradients overlap (bias_stride < N)");
    const int P = g.rows_per_expert;
    const long long in_block = static_cast<long long>(P) * K;
    const long long out_block = static_cast<long long>(P) * N;
    const long long w_stride = static_cast<long long>(weight_stride);
    if (K > 0) {
        if (dinp) {
            gpu::sgemm_strided_batched(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_N, K, P,
                                       N, 1.0f, weight, K, w_stride, dout, N, out_block, 1.0f, dinp,
                                       K, in_block, g.E);
        }
        if (dweight) {
            gpu::sgemm_strided_batched(state_->cublas, precision_, CUBLAS_OP_N, CUBLAS_OP_T, K, N,
                                       P, 1.0f, inp, K, in_block, dout, N, out_block, 1.0f, dweight,
                                       K, w_stride, g.E);
        }
    }
    if (dbias) gpu::add_column_sums(*state_, dbias, bias_stride, dout, g.E, P, N);
}

}  // namespace upcycle
