// Multi-head self-attention core, flash style: memory linear in T (scratch is one block of
// query rows against all keys), the backward recomputes probabilities from the saved
// log-sum-exp.
//
// Each (batch, head) pair is one task of an OpenMP loop; inside it the GEMMs are
// single-threaded cblas_sgemm calls (the OpenMP OpenBLAS runs one thread inside a parallel
// region). A task gathers its strided q, k, v (row stride 3C) into contiguous thread-local
// buffers, q pre-scaled by 1/√hs, then walks blocks of kQueryBlock query rows. With the
// causal mask, the block of rows [r0, r1) only needs keys [0, r1): the upper triangle beyond
// the diagonal block is never computed.
//
// Forward, per block:  S = q_s·kᵀ;  lse_i = log Σ_j exp(S_ij) over allowed j;
//                      P = exp(S - max) (unnormalised);  out = (P·v) / Σ_j P_ij.
// Backward, per block: P = exp(S - lse);  dP = dout·vᵀ;  D_i = Σ_c dout_ic·out_ic;
//                      dS = P ∘ (dP - D);  dq += dS·k/√hs;  dk += dSᵀ·q_s;  dv += Pᵀ·dout,
// accumulated straight into dqkv (ldc = 3C); each task owns its head's columns of dqkv and
// visits blocks in a fixed order, so results do not depend on the thread count.
#include <cblas.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fast_math.h"

namespace upcycle {

namespace {

// Query rows per block: small enough that the causal mask skips most of the upper triangle
// for long sequences, large enough that the sgemm calls stay efficient.
constexpr int kQueryBlock = 64;

// Thread-local scratch that grows and is never given back, so a training loop does not
// allocate on every call.
float* scratch(std::vector<float>& buffer, std::size_t floats) {
    if (buffer.size() < floats) buffer.resize(floats);
    return buffer.data();
}

// dst[T,hs] (contiguous) = src[T, stride] columns [0, hs), times factor.
void gather(float* dst, const float* src, int T, int hs, std::size_t stride, float factor) {
    for (int t = 0; t < T; ++t) {
        const float* s = src + static_cast<std::size_t>(t) * stride;
        float* d = dst + static_cast<std::size_t>(t) * hs;
#pragma omp simd
        for (int c = 0; c < hs; ++c) d[c] = s[c] * factor;
    }
}

// Number of keys query row i may attend to, given kv keys computed for its block.
inline int allowed_keys(int i, int kv, bool causal) { return causal ? i + 1 : kv; }

}  // namespace

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv, int B, int T,
                                   int C, int H, bool causal) {
    const int hs = C / H;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const std::size_t row_stride = 3 * static_cast<std::size_t>(C);
    const int pairs = B * H;

#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; ++pair) {
        const int b = pair / H;
        const int h = pair % H;
        thread_local std::vector<float> qkv_buffer, score_buffer;
        const std::size_t th = static_cast<std::size_t>(T) * hs;
        float* q = scratch(qkv_buffer, 3 * th);
        float* k = q + th;
        float* v = k + th;
        const int block = T < kQueryBlock ? T : kQueryBlock;
        float* s = scratch(score_buffer, static_cast<std::size_t>(block) * T);

        const float* base = qkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        gather(q, base, T, hs, row_stride, scale);
        gather(k, base + C, T, hs, row_stride, 1.0f);
        gather(v, base + 2 * C, T, hs, row_stride, 1.0f);
        float* out_bh = out + static_cast<std::size_t>(b) * T * C + h * hs;
        float* lse_bh = lse + static_cast<std::size_t>(pair) * T;

        for (int r0 = 0; r0 < T; r0 += block) {
            const int rows = r0 + block < T ? block : T - r0;
            const int kv = causal ? r0 + rows : T;
            // S[rows, kv] = q_s[r0:r0+rows] · k[0:kv]ᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kv, hs, 1.0f,
                        q + static_cast<std::size_t>(r0) * hs, hs, k, hs, 0.0f, s, kv);
            for (int i = 0; i < rows; ++i) {
                float* srow = s + static_cast<std::size_t>(i) * kv;
                const int len = allowed_keys(r0 + i, kv, causal);
                float max_value = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_value)
                for (int j = 0; j < len; ++j) max_value = srow[j] > max_value ? srow[j] : max_value;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < len; ++j) {
                    const float e = cpu::fast_exp(srow[j] - max_value);
                    srow[j] = e;
                    sum += e;
                }
                for (int j = len; j < kv; ++j) srow[j] = 0.0f;
                lse_bh[r0 + i] = max_value + std::log(sum);
                // Fold the normalisation into P (kv multiplies per row, done once here).
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int j = 0; j < len; ++j) srow[j] *= inv;
            }
            // out[r0:r0+rows, head columns] = P · v[0:kv]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kv, 1.0f, s, kv, v,
                        hs, 0.0f, out_bh + static_cast<std::size_t>(r0) * C, C);
        }
    }
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int B, int T, int C,
                                    int H, bool causal) {
    const int hs = C / H;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const std::size_t row_stride = 3 * static_cast<std::size_t>(C);
    const int pairs = B * H;

#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; ++pair) {
        const int b = pair / H;
        const int h = pair % H;
        thread_local std::vector<float> input_buffer, block_buffer, delta_buffer;
        const std::size_t th = static_cast<std::size_t>(T) * hs;
        float* q = scratch(input_buffer, 4 * th);
        float* k = q + th;
        float* v = k + th;
        float* dy = v + th;
        const int block = T < kQueryBlock ? T : kQueryBlock;
        float* p = scratch(block_buffer, 2 * static_cast<std::size_t>(block) * T);
        float* dp = p + static_cast<std::size_t>(block) * T;
        float* delta = scratch(delta_buffer, static_cast<std::size_t>(T));

        const float* base = qkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        gather(q, base, T, hs, row_stride, scale);
        gather(k, base + C, T, hs, row_stride, 1.0f);
        gather(v, base + 2 * C, T, hs, row_stride, 1.0f);
        const std::size_t head_offset = static_cast<std::size_t>(b) * T * C + h * hs;
        gather(dy, dout + head_offset, T, hs, C, 1.0f);
        const float* out_bh = out + head_offset;
        for (int t = 0; t < T; ++t) {
            const float* o = out_bh + static_cast<std::size_t>(t) * C;
            const float* d = dy + static_cast<std::size_t>(t) * hs;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int c = 0; c < hs; ++c) acc += d[c] * o[c];
            delta[t] = acc;
        }
        const float* lse_bh = lse + static_cast<std::size_t>(pair) * T;
        float* dq = dqkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        float* dk = dq + C;
        float* dv = dq + 2 * C;

        for (int r0 = 0; r0 < T; r0 += block) {
            const int rows = r0 + block < T ? block : T - r0;
            const int kv = causal ? r0 + rows : T;
            const float* q_blk = q + static_cast<std::size_t>(r0) * hs;
            const float* dy_blk = dy + static_cast<std::size_t>(r0) * hs;
            // S = q_s·kᵀ, then P = exp(S - lse) with the mask applied.
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kv, hs, 1.0f, q_blk, hs,
                        k, hs, 0.0f, p, kv);
            // dP = dout·vᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kv, hs, 1.0f, dy_blk, hs,
                        v, hs, 0.0f, dp, kv);
            for (int i = 0; i < rows; ++i) {
                float* prow = p + static_cast<std::size_t>(i) * kv;
                float* dprow = dp + static_cast<std::size_t>(i) * kv;
                const int len = allowed_keys(r0 + i, kv, causal);
                const float l = lse_bh[r0 + i];
                const float d = delta[r0 + i];
#pragma omp simd
                for (int j = 0; j < len; ++j) {
                    const float pij = cpu::fast_exp(prow[j] - l);
                    prow[j] = pij;
                    dprow[j] = pij * (dprow[j] - d);  // dS
                }
                for (int j = len; j < kv; ++j) {
                    prow[j] = 0.0f;
                    dprow[j] = 0.0f;
                }
            }
            // dv[0:kv] += Pᵀ·dout_blk
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kv, hs, rows, 1.0f, p, kv,
                        dy_blk, hs, 1.0f, dv, static_cast<int>(row_stride));
            // dq_blk += dS·k[0:kv] / √hs
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kv, scale, dp, kv, k,
                        hs, 1.0f, dq + static_cast<std::size_t>(r0) * row_stride,
                        static_cast<int>(row_stride));
            // dk[0:kv] += dSᵀ·q_s_blk
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kv, hs, rows, 1.0f, dp, kv,
                        q_blk, hs, 1.0f, dk, static_cast<int>(row_stride));
        }
    }
}

}  // namespace upcycle
