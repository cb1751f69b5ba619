// Multi-head self-attention core, flash style: memory linear in T (the scratch is one block
// of query rows against all keys) and the backward recomputes the probabilities from the
// saved log-sum-exp.
//
// Each (batch, head) pair is one task of an OpenMP loop; inside it the GEMMs are
// single-threaded cblas_sgemm calls (the OpenMP OpenBLAS runs one thread inside a parallel
// region). A task gathers its strided q, k, v (row stride 3C) into contiguous thread-local
// buffers, q pre-scaled by 1/√hs, then walks blocks of kQueryBlock query rows. With the
// causal mask the block of rows [r0, r1) only needs keys [0, r1): everything right of the
// diagonal block is never computed.
//
// Scores are kept TRANSPOSED, Sᵀ[key j, query i], so every softmax statistic of a query row
// (max, sum, lse, D) is an elementwise operation across a contiguous run of queries: the
// loops vectorise over queries with no horizontal reductions (per-row reductions over short
// rows cost more than the exponentials here).
//
// Forward, per block:  Sᵀ = k·q_sᵀ;  m_i = max_j S_ij;  P = exp(S - m), masked;
//                      l_i = Σ_j P_ij;  lse_i = m_i + log l_i;  out = (P·v) / l.
// Backward, per block: P = exp(S - lse), masked;  dP = dout·vᵀ;
//                      D_i = Σ_j P_ij·dP_ij  (= dout_i·out_i, computed without reductions);
//                      dS = P ∘ (dP - D);  dq += dS·k/√hs;  dk += dSᵀ·q_s;  dv += Pᵀ·dout,
// accumulated straight into dqkv (ldc = 3C); each task owns its head's columns of dqkv and
// visits blocks in a fixed order, so results do not depend on the thread count.
// Masked entries get score -inf, which exp turns into exact zeros.
#include <cblas.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "core/errors.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/thread_buffer.h"

namespace upcycle {

namespace {

// Query rows per block: small enough that the causal mask skips most of the upper triangle,
// large enough that the sgemm calls stay efficient. 48 measured best of 16..128 across
// (T, hs) = (128, 32), (256, 64), (1024, 64) on AVX-512 OpenBLAS.
constexpr int kQueryBlock = 48;
// Score rows are padded to whole 64-byte cache lines.
constexpr int kLineFloats = 16;
// Below this many score entries (B·H·T²) the attention may run on the calling thread alone,
constexpr std::int64_t kParallelMin = 1 << 15;
// provided no sgemm call is larger than this many multiply-adds: OpenBLAS stays
// single-threaded below 4·65536 even outside a parallel region, so the results cannot
// depend on the thread count.
constexpr std::int64_t kSerialMultiplyAdds = 1 << 16;

// Whether to run the (batch, head) loop as an OpenMP parallel loop.
bool run_parallel(int pairs, int T, int hs, int block_rows) {
    return static_cast<std::int64_t>(pairs) * T * T >= kParallelMin ||
           static_cast<std::int64_t>(block_rows) * T * hs > kSerialMultiplyAdds;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int round_up(int n, int multiple) { return (n + multiple - 1) / multiple * multiple; }

// dst[T,hs] (contiguous) = src[T, stride] columns [0, hs), times factor.
void gather(float* dst, const float* src, int T, int hs, std::size_t stride, float factor) {
    for (int t = 0; t < T; ++t) {
        const float* s = src + static_cast<std::size_t>(t) * stride;
        float* d = dst + static_cast<std::size_t>(t) * hs;
#pragma omp simd
        for (int c = 0; c < hs; ++c) d[c] = s[c] * factor;
    }
}

// One block of query rows [r0, r0 + rows) against keys [0, kv); transposed score buffers
// have kv rows of ld floats.
struct Block {
    int r0, rows, kv, ld;
    Block(int r0_, int block_rows, int T, bool causal)
        : r0(r0_),
          rows(r0_ + block_rows < T ? block_rows : T - r0_),
          kv(causal ? r0_ + rows : T),
          ld(round_up(rows, kLineFloats)) {}
    // Causal: key j is hidden from the block's first (j - r0) queries.
    int masked_queries(int j, bool causal) const {
        if (!causal || j <= r0) return 0;
        return j - r0 < rows ? j - r0 : rows;
    }
};

// Sets the masked (key, query) entries of a transposed score block to -inf.
void apply_causal_mask(float* st, const Block& blk, bool causal) {
    for (int j = blk.r0 + 1; j < blk.kv; ++j) {
        float* row = st + static_cast<std::size_t>(j) * blk.ld;
        const int n = blk.masked_queries(j, causal);
        for (int i = 0; i < n; ++i) row[i] = kNegInf;
    }
}

// The column loops below take kKeyGroup key rows per pass over the query statistics, so
// those are loaded and stored once per group rather than once per key (the chain through
// memory, not the arithmetic, limits a one-key-per-pass loop). Fixed grouping: the order
// of operations depends only on the shapes.
constexpr int kKeyGroup = 4;

// mx[i] = max_j st[j][i]
void column_max(float* mx, const float* st, const Block& blk) {
#pragma omp simd
    for (int i = 0; i < blk.rows; ++i) mx[i] = kNegInf;
    const std::size_t ld = blk.ld;
    int j = 0;
    for (; j + kKeyGroup <= blk.kv; j += kKeyGroup) {
        const float* s0 = st + j * ld;
        const float* s1 = s0 + ld;
        const float* s2 = s1 + ld;
        const float* s3 = s2 + ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) {
            const float a = s0[i] > s1[i] ? s0[i] : s1[i];
            const float b = s2[i] > s3[i] ? s2[i] : s3[i];
            const float m = a > b ? a : b;
            mx[i] = m > mx[i] ? m : mx[i];
        }
    }
    for (; j < blk.kv; ++j) {
        const float* s0 = st + j * ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) mx[i] = s0[i] > mx[i] ? s0[i] : mx[i];
    }
}

// st[j][i] = exp(st[j][i] - mx[i]);  sum[i] = Σ_j st[j][i]
void exp_and_column_sum(float* sum, float* st, const float* mx, const Block& blk) {
#pragma omp simd
    for (int i = 0; i < blk.rows; ++i) sum[i] = 0.0f;
    const std::size_t ld = blk.ld;
    int j = 0;
    for (; j + kKeyGroup <= blk.kv; j += kKeyGroup) {
        float* s0 = st + j * ld;
        float* s1 = s0 + ld;
        float* s2 = s1 + ld;
        float* s3 = s2 + ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) {
            const float e0 = cpu::fast_exp(s0[i] - mx[i]);
            const float e1 = cpu::fast_exp(s1[i] - mx[i]);
            const float e2 = cpu::fast_exp(s2[i] - mx[i]);
            const float e3 = cpu::fast_exp(s3[i] - mx[i]);
            s0[i] = e0;
            s1[i] = e1;
            s2[i] = e2;
            s3[i] = e3;
            sum[i] += (e0 + e1) + (e2 + e3);
        }
    }
    for (; j < blk.kv; ++j) {
        float* s0 = st + j * ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) {
            const float e0 = cpu::fast_exp(s0[i] - mx[i]);
            s0[i] = e0;
            sum[i] += e0;
        }
    }
}

// pt[j][i] = exp(pt[j][i] - lse[i]);  delta[i] = Σ_j pt[j][i]·dpt[j][i]
void probabilities_and_delta(float* delta, float* pt, const float* dpt, const float* lse,
                             const Block& blk) {
#pragma omp simd
    for (int i = 0; i < blk.rows; ++i) delta[i] = 0.0f;
    const std::size_t ld = blk.ld;
    int j = 0;
    for (; j + kKeyGroup <= blk.kv; j += kKeyGroup) {
        float* p0 = pt + j * ld;
        float* p1 = p0 + ld;
        float* p2 = p1 + ld;
        float* p3 = p2 + ld;
        const float* d0 = dpt + j * ld;
        const float* d1 = d0 + ld;
        const float* d2 = d1 + ld;
        const float* d3 = d2 + ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) {
            const float e0 = cpu::fast_exp(p0[i] - lse[i]);
            const float e1 = cpu::fast_exp(p1[i] - lse[i]);
            const float e2 = cpu::fast_exp(p2[i] - lse[i]);
            const float e3 = cpu::fast_exp(p3[i] - lse[i]);
            p0[i] = e0;
            p1[i] = e1;
            p2[i] = e2;
            p3[i] = e3;
            delta[i] += (e0 * d0[i] + e1 * d1[i]) + (e2 * d2[i] + e3 * d3[i]);
        }
    }
    for (; j < blk.kv; ++j) {
        float* p0 = pt + j * ld;
        const float* d0 = dpt + j * ld;
#pragma omp simd
        for (int i = 0; i < blk.rows; ++i) {
            const float e0 = cpu::fast_exp(p0[i] - lse[i]);
            p0[i] = e0;
            delta[i] += e0 * d0[i];
        }
    }
}

}  // namespace

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C,
                                   int H, bool causal) {
    UPCYCLE_ASSERT(H > 0 && C % H == 0, "attention: C must be a multiple of H");
    const int hs = C / H;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const std::size_t row_stride = 3 * static_cast<std::size_t>(C);
    const int pairs = B * H;
    const int block_rows = T < kQueryBlock ? T : kQueryBlock;
    const int block_ld = round_up(block_rows, kLineFloats);

#pragma omp parallel for schedule(static) if (run_parallel(pairs, T, hs, block_rows))
    for (int pair = 0; pair < pairs; ++pair) {
        const int b = pair / H;
        const int h = pair % H;
        thread_local cpu::ThreadBuffer input_scratch, score_scratch, stats_scratch;
        const std::size_t th = static_cast<std::size_t>(T) * hs;
        float* q = input_scratch.get(3 * th);
        float* k = q + th;
        float* v = k + th;
        float* st = score_scratch.get(static_cast<std::size_t>(T) * block_ld);
        float* row_max = stats_scratch.get(2 * static_cast<std::size_t>(block_ld));
        float* row_sum = row_max + block_ld;

        const float* base = qkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        gather(q, base, T, hs, row_stride, scale);
        gather(k, base + C, T, hs, row_stride, 1.0f);
        gather(v, base + 2 * C, T, hs, row_stride, 1.0f);
        float* out_bh = out + static_cast<std::size_t>(b) * T * C + h * hs;
        float* lse_bh = lse + static_cast<std::size_t>(pair) * T;

        for (int r0 = 0; r0 < T; r0 += block_rows) {
            const Block blk(r0, block_rows, T, causal);
            const int rows = blk.rows;
            // Sᵀ[kv, rows] = k[0:kv] · q_s[r0:r0+rows]ᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blk.kv, rows, hs, 1.0f, k, hs,
                        q + static_cast<std::size_t>(r0) * hs, hs, 0.0f, st, blk.ld);
            apply_causal_mask(st, blk, causal);
            column_max(row_max, st, blk);
            exp_and_column_sum(row_sum, st, row_max, blk);
#pragma omp simd
            for (int i = 0; i < rows; ++i) lse_bh[r0 + i] = row_max[i] + cpu::fast_log(row_sum[i]);
            // out[r0:r0+rows, head columns] = (Pᵀ)ᵀ · v[0:kv], then each row divided by its sum
            float* out_blk = out_bh + static_cast<std::size_t>(r0) * C;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, hs, blk.kv, 1.0f, st, blk.ld,
                        v, hs, 0.0f, out_blk, C);
            for (int i = 0; i < rows; ++i) {
                float* orow = out_blk + static_cast<std::size_t>(i) * C;
                const float inv = 1.0f / row_sum[i];
#pragma omp simd
                for (int c = 0; c < hs; ++c) orow[c] *= inv;
            }
        }
    }
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int B, int T, int C, int H,
                                    bool causal) {
    // D_i = dout_i·out_i is computed as Σ_j P_ij·dP_ij from the recomputed block instead
    // (the same value; no per-row reductions), so out itself is not read.
    (void)out;
    UPCYCLE_ASSERT(H > 0 && C % H == 0, "attention: C must be a multiple of H");
    const int hs = C / H;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const std::size_t row_stride = 3 * static_cast<std::size_t>(C);
    const int ldqkv = static_cast<int>(row_stride);
    const int pairs = B * H;
    const int block_rows = T < kQueryBlock ? T : kQueryBlock;
    const int block_ld = round_up(block_rows, kLineFloats);

#pragma omp parallel for schedule(static) if (run_parallel(pairs, T, hs, block_rows))
    for (int pair = 0; pair < pairs; ++pair) {
        const int b = pair / H;
        const int h = pair % H;
        thread_local cpu::ThreadBuffer input_scratch, block_scratch, stats_scratch;
        const std::size_t th = static_cast<std::size_t>(T) * hs;
        float* q = input_scratch.get(4 * th);
        float* k = q + th;
        float* v = k + th;
        float* dy = v + th;
        const std::size_t block_floats = static_cast<std::size_t>(T) * block_ld;
        float* pt = block_scratch.get(2 * block_floats);  // Sᵀ, then Pᵀ
        float* dpt = pt + block_floats;                   // dPᵀ, then dSᵀ
        float* delta = stats_scratch.get(static_cast<std::size_t>(block_ld));

        const float* base = qkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        gather(q, base, T, hs, row_stride, scale);
        gather(k, base + C, T, hs, row_stride, 1.0f);
        gather(v, base + 2 * C, T, hs, row_stride, 1.0f);
        gather(dy, dout + static_cast<std::size_t>(b) * T * C + h * hs, T, hs, C, 1.0f);
        const float* lse_bh = lse + static_cast<std::size_t>(pair) * T;
        float* dq = dqkv + static_cast<std::size_t>(b) * T * row_stride + h * hs;
        float* dk = dq + C;
        float* dv = dq + 2 * C;

        for (int r0 = 0; r0 < T; r0 += block_rows) {
            const Block blk(r0, block_rows, T, causal);
            const int rows = blk.rows;
            const float* q_blk = q + static_cast<std::size_t>(r0) * hs;
            const float* dy_blk = dy + static_cast<std::size_t>(r0) * hs;
            // Sᵀ = k·q_s_blkᵀ,  dPᵀ = v·dout_blkᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blk.kv, rows, hs, 1.0f, k, hs,
                        q_blk, hs, 0.0f, pt, blk.ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blk.kv, rows, hs, 1.0f, v, hs,
                        dy_blk, hs, 0.0f, dpt, blk.ld);
            apply_causal_mask(pt, blk, causal);
            probabilities_and_delta(delta, pt, dpt, lse_bh + r0, blk);
            for (int j = 0; j < blk.kv; ++j) {
                const float* prow = pt + static_cast<std::size_t>(j) * blk.ld;
                float* dsrow = dpt + static_cast<std::size_t>(j) * blk.ld;
#pragma omp simd
                for (int i = 0; i < rows; ++i) dsrow[i] = prow[i] * (dsrow[i] - delta[i]);
            }
            // dv[0:kv] += Pᵀ·dout_blk
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blk.kv, hs, rows, 1.0f, pt,
                        blk.ld, dy_blk, hs, 1.0f, dv, ldqkv);
            // dk[0:kv] += dSᵀ·q_s_blk
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blk.kv, hs, rows, 1.0f, dpt,
                        blk.ld, q_blk, hs, 1.0f, dk, ldqkv);
            // dq_blk += (dSᵀ)ᵀ·k[0:kv] / √hs
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, hs, blk.kv, scale, dpt,
                        blk.ld, k, hs, 1.0f, dq + static_cast<std::size_t>(r0) * row_stride, ldqkv);
        }
    }
}

}  // namespace upcycle
