// Multi-head self-attention core on bf16 tensor cores, flash style: the Precision::BF16 path
// of CudaBackend::attention_forward / attention_backward (dispatched from attention.cu when
// the head size hs = C/H is a multiple of 16 and at most 128). Same contract and the same
// math as the fp32 kernels there and as the specification, kernels/cpu/attention.cpp; only
// the operands of the matrix products are rounded to bfloat16 (round to nearest even) and
// multiplied on the tensor cores with fp32 accumulation (WMMA m16n16k16, bf16 × bf16 → fp32).
// Memory stays fp32 (qkv, out, lse, dout, dqkv); memory is linear in T (no T×T buffer).
//
// Scores: S_ts = bf(q_t·scale)·bf(k_s) with scale = 1/√hs (q scaled first, then rounded, as
// the CPU scales q first), masked to s ≤ t when causal; lse_t = log Σ_s exp(S_ts).
// bf(x) is x rounded to bf16. Every softmax statistic (row max, sum, lse), the rescaling of
// the running output, D_t and dS are fp32.
//
// Step 0, prepare (one warp per (b, h, t) row): q·scale, k, v (and dout for the backward)
// rounded once to bf16 into scratch arrays [B,H,T,hs] (contiguous per head, so tiles are
// plain 16-byte copies); the backward's prepare also writes D_t = dout_t·out_t (fp32) to
// scratch [B,H,T].
//
// Tiles: every kernel runs blocks of kWarps = 4 warps (128 threads) on one (batch, head) pair
// and one tile of kTile = 64 rows of its own side (queries for the forward and dq, keys for
// dk/dv); warp w owns the 16 tile rows [16w, 16w + 16) — one WMMA row of fragments — and is
// the only writer of those rows' accumulators, so between block-wide tile loads a warp only
// synchronises with itself (__syncwarp). The block walks the other side in tiles of kTile =
// 64 rows staged in shared memory as bf16 (rows at or beyond T zero-filled, so no garbage or
// NaN enters a product; they are also masked). The query tile and the key tile have the same
// size and start on multiples of it, so with the causal mask the last key tile a query tile
// [q0, q0 + 64) walks is its diagonal one, starting at key q0 ≤ t for each query t in it:
// every walked key tile holds a visible key for every real query row.
//
// Forward (per block: queries [q0, q0 + 64) against key tiles [0, kv_end), kv_end = q0 + 64
// when causal): warp w computes its 16×64 strip S = Q_w·K_tileᵀ (4 accumulator fragments,
// each over hs/16 k-steps) into shared fp32; then, one row at a time, the 32 lanes take two
// columns each: m' = max(m, max_j S_tj); p_tj = e^(S_tj - m'); l = l·e^(m-m') + Σ_j p_tj;
// the running output row O_t (fp32 in shared memory: accumulator fragments cannot be
// rescaled per row through their opaque layout) is multiplied by e^(m-m'); P = bf(p) goes to
// shared bf16. Then O_w += P_w·V_tile with the accumulator loaded from and stored back to
// shared memory. At the end out_t = O_t / l and lse_t = m + log l. The row statistics m, l
// live in registers, the same value in every lane of the warp (butterfly reductions give
// every lane bit-identical results). A row none of whose keys is visible in a tile (only a
// padding row t ≥ T can be one) uses 0 as its reference, so e^(-inf - 0) = 0, never
// e^(-inf + inf) = NaN.
//
// Backward (FlashAttention-2 split, two kernels; P_ts = e^(S_ts - lse_t) recomputed from the
// saved lse, dP_ts = dout_t·v_s with bf16 operands, dS_ts = P_ts·(dP_ts - D_t) in fp32):
//   dq kernel    one block per (b, h, query tile), walking key tiles [0, kv_end):
//                per 16×16 fragment S and dP come out of the tensor cores into a per-warp
//                fp32 scratch, the lanes form dS (elementwise) into shared bf16, then
//                dQ_w += dS_w·K_tile (shared fp32 accumulator); at the end
//                dq_t += scale · dQ_t.
//   dk/dv kernel one block per (b, h, key tile [k0, k0 + 64)), walking query tiles from k0
//                when causal (earlier queries cannot see these keys), from 0 otherwise:
//                Sᵀ = K_w·Q_tileᵀ and dPᵀ = V_w·dO_tileᵀ per fragment, Pᵀ and dSᵀ to shared
//                bf16, then dV_w += Pᵀ_w·dO_tile and dK_w += dSᵀ_w·Q_s_tile (q_s = q·scale,
//                so no extra factor); at the end dk_s += dK_s, dv_s += dV_s.
// Deterministic: each output element (out, lse, and each dq, dk, dv element) is produced by
// exactly one warp of one block, which visits the other side's tiles in an order fixed by
// the shapes and sums each product in a fixed order; it is then written (forward) or added
// (backward, +=) once. No atomics.
//
// Shared memory per block (bytes; ld = hs + 8 for bf16 [64, hs] tiles, hs + 4 for fp32
// [64, hs] accumulators, 72 / 68 for bf16 / fp32 [64, 64] tiles — the pads shift each row by
// 4 banks, so the 8-row fragment loads are free of bank conflicts):
//   forward  Q, K, V bf16 + S fp32 + P bf16 + O fp32          hs=64: 71,680   hs=128: 112,640
//   dq       Q, dO, K, V bf16 + dS bf16 + dQ fp32 + lse, D + scratch
//                                                             hs=64: 72,192   hs=128: 121,344
//   dk/dv    K, V, Q, dO bf16 + P, dS bf16 + dK, dV fp32 + lse, D + scratch
//                                                             hs=64: 98,816   hs=128: 164,352
// (hs=16: 40,960, 35,328, 49,664.) Mostly above the 48 KB default, so each launch raises the
// kernel's limit with cudaFuncSetAttribute (the H100 allows 227 KB per block; checked at
// compile time for hs = 128). At hs = 64 that is 3, 3 and 2 blocks (12, 12, 8 warps) per SM.
// Global scratch: the bf16 copies, 3 (forward) or 4 (backward) × B·H·T·hs × 2 bytes, and D,
// B·H·T floats — linear in T.
#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/errors.h"
#include "kernels/cuda/attention_bf16.cuh"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using gpu::DeviceScratch;
using gpu::kFullMask;
using gpu::kWarpSize;
using gpu::warp_max;
using gpu::warp_sum;

constexpr int kMaxHeadSize = 128;
constexpr int kFrag = 16;  // WMMA m = n = k = 16
// Rows per tile, on both sides (query tile = key tile: the causal reasoning above needs it).
constexpr int kTile = 64;
constexpr int kWarps = kTile / kFrag;  // 4: warp w owns tile rows [16w, 16w + 16)
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kFragsPerTile = kTile / kFrag;      // 4 fragments across a 64-wide tile
constexpr int kColsPerLane = kTile / kWarpSize;   // 2: softmax columns per lane
constexpr int kFragElems = kFrag * kFrag;         // 256 elements in one 16×16 fragment
constexpr int kBf16Pad = 8;   // 16 bytes: WMMA needs bf16 leading dims to be multiples of 8
constexpr int kF32Pad = 4;    // 16 bytes: WMMA needs fp32 leading dims to be multiples of 4
constexpr int kChunk = 8;     // bf16 per 16-byte copy (uint4)
constexpr int kPrepareWarps = 8;  // rows per block of the prepare kernel, one warp each
constexpr std::size_t kRegionAlign = 128;  // shared memory regions start on 128-byte lines
constexpr std::size_t kMaxSmemPerBlock = 227 * 1024;  // H100 opt-in maximum

static_assert(kWarps * kFrag == kTile, "one warp per 16 tile rows");
static_assert(kColsPerLane * kWarpSize == kTile, "the softmax covers a tile row exactly");
static_assert(kMaxHeadSize % kFrag == 0 && kFrag % kChunk == 0, "tile copies are whole chunks");

using FragA = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
// B[k][n] read from a row-major [n][k] array: "times the transpose".
using FragBt = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using FragAcc = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

// ---- shared memory layouts (the same arithmetic on the host, for the launch size) --------

__host__ __device__ constexpr std::size_t align_region(std::size_t bytes) {
    return (bytes + kRegionAlign - 1) / kRegionAlign * kRegionAlign;
}

// Leading dimensions, in elements, of the tiles every kernel uses.
struct Strides {
    int in;     // bf16 [kTile, hs] operand tiles (Q, K, V, dO)
    int acc;    // fp32 [kTile, hs] accumulators (O, dQ, dK, dV)
    int score;  // fp32 [kTile, kTile] scores (forward)
    int prob;   // bf16 [kTile, kTile] P, dS
    __host__ __device__ constexpr explicit Strides(int hs)
        : in(hs + kBf16Pad), acc(hs + kF32Pad), score(kTile + kF32Pad), prob(kTile + kBf16Pad) {}
};

// Byte sizes of the regions.
__host__ __device__ constexpr std::size_t in_tile_bytes(const Strides& ld) {
    return align_region(std::size_t(kTile) * ld.in * sizeof(bf16));
}
__host__ __device__ constexpr std::size_t acc_tile_bytes(const Strides& ld) {
    return align_region(std::size_t(kTile) * ld.acc * sizeof(float));
}
__host__ __device__ constexpr std::size_t prob_tile_bytes(const Strides& ld) {
    return align_region(std::size_t(kTile) * ld.prob * sizeof(bf16));
}
__host__ __device__ constexpr std::size_t score_tile_bytes(const Strides& ld) {
    return align_region(std::size_t(kTile) * ld.score * sizeof(float));
}
constexpr std::size_t kRowStatBytes = align_region(kTile * sizeof(float));  // lse or D rows
// Per warp: two fp32 16×16 fragments (S and dP of the backward), leading dimension 16.
constexpr std::size_t kScratchBytes =
    align_region(std::size_t(kWarps) * 2 * kFragElems * sizeof(float));

// Forward: Q, K, V | S | P | O   (byte offsets)
struct ForwardSmem {
    Strides ld;
    std::size_t q, k, v, s, p, o, bytes;
    __host__ __device__ constexpr explicit ForwardSmem(int hs)
        : ld(hs),
          q(0),
          k(q + in_tile_bytes(ld)),
          v(k + in_tile_bytes(ld)),
          s(v + in_tile_bytes(ld)),
          p(s + score_tile_bytes(ld)),
          o(p + prob_tile_bytes(ld)),
          bytes(o + acc_tile_bytes(ld)) {}
};

// dq: Q, dO, K, V | dS | dQ | lse, D | scratch
struct DqSmem {
    Strides ld;
    std::size_t q, dy, k, v, ds, dq, lse, delta, scratch, bytes;
    __host__ __device__ constexpr explicit DqSmem(int hs)
        : ld(hs),
          q(0),
          dy(q + in_tile_bytes(ld)),
          k(dy + in_tile_bytes(ld)),
          v(k + in_tile_bytes(ld)),
          ds(v + in_tile_bytes(ld)),
          dq(ds + prob_tile_bytes(ld)),
          lse(dq + acc_tile_bytes(ld)),
          delta(lse + kRowStatBytes),
          scratch(delta + kRowStatBytes),
          bytes(scratch + kScratchBytes) {}
};

// dk/dv: K, V, Q, dO | P, dS | dK, dV | lse, D | scratch
struct DkdvSmem {
    Strides ld;
    std::size_t k, v, q, dy, p, ds, dk, dv, lse, delta, scratch, bytes;
    __host__ __device__ constexpr explicit DkdvSmem(int hs)
        : ld(hs),
          k(0),
          v(k + in_tile_bytes(ld)),
          q(v + in_tile_bytes(ld)),
          dy(q + in_tile_bytes(ld)),
          p(dy + in_tile_bytes(ld)),
          ds(p + prob_tile_bytes(ld)),
          dk(ds + prob_tile_bytes(ld)),
          dv(dk + acc_tile_bytes(ld)),
          lse(dv + acc_tile_bytes(ld)),
          delta(lse + kRowStatBytes),
          scratch(delta + kRowStatBytes),
          bytes(scratch + kScratchBytes) {}
};

static_assert(ForwardSmem(kMaxHeadSize).bytes <= kMaxSmemPerBlock, "forward smem at hs = 128");
static_assert(DqSmem(kMaxHeadSize).bytes <= kMaxSmemPerBlock, "dq smem at hs = 128");
static_assert(DkdvSmem(kMaxHeadSize).bytes <= kMaxSmemPerBlock, "dk/dv smem at hs = 128");

// A region of the block's dynamic shared memory, at an offset of the layouts above.
template <typename T>
__device__ T* region(unsigned char* smem, std::size_t offset) {
    return reinterpret_cast<T*>(smem + offset);
}

// ---- device helpers -----------------------------------------------------------------------

// Whether query t sees key s: both real rows (not tile padding), and s ≤ t when causal.
__device__ bool visible(int s, int t, int T, bool causal) {
    return s < T && t < T && (!causal || s <= t);
}

// dst[kTile, ld] (bf16, shared) = rows [r0, r0 + kTile) of src[T, hs] (bf16, global,
// contiguous rows), rows at or beyond T zero. Called by the whole block: 16-byte copies,
// consecutive threads on consecutive chunks of a row (coalesced).
__device__ void load_tile(bf16* dst, int ld, const bf16* src, int r0, int T, int hs) {
    const int chunks_per_row = hs / kChunk;
    for (int i = static_cast<int>(threadIdx.x); i < kTile * chunks_per_row; i += kThreads) {
        const int r = i / chunks_per_row;
        const int c = (i % chunks_per_row) * kChunk;
        uint4 value = make_uint4(0u, 0u, 0u, 0u);  // bf16 +0.0 in every lane
        if (r0 + r < T) {
            const std::size_t at = static_cast<std::size_t>(r0 + r) * hs + c;
            value = *reinterpret_cast<const uint4*>(src + at);
        }
        *reinterpret_cast<uint4*>(dst + r * ld + c) = value;
    }
}

// dst[i] = src[r0 + i] for the kTile rows of a tile, 0 at or beyond T. Whole block.
__device__ void load_row_stats(float* dst, const float* src, int r0, int T) {
    for (int i = static_cast<int>(threadIdx.x); i < kTile; i += kThreads) {
        dst[i] = r0 + i < T ? src[r0 + i] : 0.0f;
    }
}

// Whole block: n floats at dst = 0.
__device__ void zero_floats(float* dst, int n) {
    for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads) dst[i] = 0.0f;
}

// One warp: acc = A·Bᵀ for A = a[16, hs] and B = b[16, hs] (both bf16 row-major, leading
// dims lda, ldb): a 16×16 block of a "rows times rows" product such as Q·Kᵀ, summed over
// hs in k-steps of 16.
__device__ void mma_rows_by_rows(FragAcc& acc, const bf16* a, int lda, const bf16* b, int ldb,
                                 int hs) {
    wmma::fill_fragment(acc, 0.0f);
    FragA fa;
    FragBt fb;
    for (int kk = 0; kk < hs; kk += kFrag) {
        wmma::load_matrix_sync(fa, a + kk, lda);
        wmma::load_matrix_sync(fb, b + kk, ldb);  // col-major view: B[k][n] = b[n·ldb + k]
        wmma::mma_sync(acc, fa, fb, acc);
    }
}

// One warp: c[16, 16] (fp32, shared, leading dim ldc) += A·B for A = a[16, kTile] and
// B = b[kTile, 16] (bf16 row-major): one 16×16 block of P·V-like products over a whole tile.
__device__ void mma_accumulate_tile(float* c, int ldc, const bf16* a, int lda, const bf16* b,
                                    int ldb) {
    FragAcc acc;
    FragA fa;
    FragB fb;
    wmma::load_matrix_sync(acc, c, ldc, wmma::mem_row_major);
    for (int kk = 0; kk < kTile; kk += kFrag) {
        wmma::load_matrix_sync(fa, a + kk, lda);
        wmma::load_matrix_sync(fb, b + static_cast<std::size_t>(kk) * ldb, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c, acc, ldc, wmma::mem_row_major);
}

// Which (batch, head) pair and which tile of rows this block handles.
struct BlockTile {
    int pair, b, h, r0;
    __device__ BlockTile(int H, int tiles)
        : pair(static_cast<int>(blockIdx.x) / tiles),
          b(pair / H),
          h(pair % H),
          r0(static_cast<int>(blockIdx.x) % tiles * kTile) {}
};

// ---- kernels ------------------------------------------------------------------------------

// One warp per row (b, h, t), row index (b·H + h)·T + t (the layout of lse and D):
//   q_s[row, :] = bf(q·scale), k[row, :] = bf(k), v[row, :] = bf(v)   ([B,H,T,hs] each)
// and, when dy is not null (the backward): dy[row, :] = bf(dout), delta[row] = dout·out (fp32).
__global__ void __launch_bounds__(kPrepareWarps * kWarpSize)
    attention_bf16_prepare_kernel(bf16* q_s, bf16* k, bf16* v, bf16* dy, float* delta,
                                  const float* qkv, const float* dout, const float* out, int B,
                                  int T, int C, int H, int hs, float scale) {
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kPrepareWarps +
                             static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    if (row >= static_cast<std::int64_t>(B) * H * T) return;  // the whole warp leaves together
    const std::int64_t pair = row / T;
    const int t = static_cast<int>(row % T);
    const int b = static_cast<int>(pair / H);
    const int h = static_cast<int>(pair % H);
    const std::size_t token = static_cast<std::size_t>(b) * T + t;
    const float* src = qkv + token * 3 * static_cast<std::size_t>(C) + h * hs;
    const std::size_t dst = static_cast<std::size_t>(row) * hs;
    for (int d = lane; d < hs; d += kWarpSize) {
        q_s[dst + d] = __float2bfloat16_rn(src[d] * scale);
        k[dst + d] = __float2bfloat16_rn(src[C + d]);
        v[dst + d] = __float2bfloat16_rn(src[2 * C + d]);
    }
    if (dy == nullptr) return;  // uniform: a kernel argument
    const std::size_t offset = token * C + h * hs;
    float acc = 0.0f;
    for (int d = lane; d < hs; d += kWarpSize) {
        const float g = dout[offset + d];
        dy[dst + d] = __float2bfloat16_rn(g);
        acc += g * out[offset + d];
    }
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

// out[b,t,head] and lse[b,h,t] for the query tile [q0, q0 + kTile); grid = B·H·tiles blocks
// of kThreads, ForwardSmem(hs).bytes of dynamic shared memory.
__global__ void __launch_bounds__(kThreads)
    attention_forward_bf16_kernel(float* out, float* lse, const bf16* q_s, const bf16* k,
                                  const bf16* v, int T, int C, int H, int hs, bool causal,
                                  int tiles) {
    extern __shared__ __align__(kRegionAlign) unsigned char smem[];
    const ForwardSmem L(hs);
    bf16* q_tile = region<bf16>(smem, L.q);
    bf16* k_tile = region<bf16>(smem, L.k);
    bf16* v_tile = region<bf16>(smem, L.v);
    float* s_tile = region<float>(smem, L.s);
    bf16* p_tile = region<bf16>(smem, L.p);
    float* o_acc = region<float>(smem, L.o);

    const BlockTile blk(H, tiles);
    const int q0 = blk.r0;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int w0 = warp * kFrag;  // the warp's first tile row
    const std::size_t head = static_cast<std::size_t>(blk.pair) * T * hs;  // [B,H,T,hs] offset

    load_tile(q_tile, L.ld.in, q_s + head, q0, T, hs);
    zero_floats(o_acc, kTile * L.ld.acc);

    // Row statistics of the warp's 16 rows, the same in every lane (registers: the loops
    // over r are unrolled).
    float m[kFrag], l[kFrag];
#pragma unroll
    for (int r = 0; r < kFrag; ++r) {
        m[r] = -INFINITY;  // running max of the visible scores
        l[r] = 0.0f;       // running Σ e^(score - m)
    }

    // Keys the tile needs: all, or up to its last row when causal.
    const int kv_end = causal ? (q0 + kTile < T ? q0 + kTile : T) : T;
    for (int k0 = 0; k0 < kv_end; k0 += kTile) {
        __syncthreads();  // the previous K, V tiles are consumed (Q, O staged, the first time)
        load_tile(k_tile, L.ld.in, k + head, k0, T, hs);
        load_tile(v_tile, L.ld.in, v + head, k0, T, hs);
        __syncthreads();

        // S[w0:w0+16, 0:kTile] = Q_w · K_tileᵀ  (fp32, shared)
        for (int j = 0; j < kFragsPerTile; ++j) {
            FragAcc acc;
            mma_rows_by_rows(acc, q_tile + w0 * L.ld.in, L.ld.in,
                             k_tile + j * kFrag * L.ld.in, L.ld.in, hs);
            wmma::store_matrix_sync(s_tile + w0 * L.ld.score + j * kFrag, acc, L.ld.score,
                                    wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax, one row at a time; lane owns columns lane + 32·i.
#pragma unroll
        for (int r = 0; r < kFrag; ++r) {
            const int row = w0 + r;
            const int t = q0 + row;
            const float* srow = s_tile + row * L.ld.score;
            float x[kColsPerLane];
            float tile_max = -INFINITY;
#pragma unroll
            for (int i = 0; i < kColsPerLane; ++i) {
                const int col = lane + i * kWarpSize;
                x[i] = visible(k0 + col, t, T, causal) ? srow[col] : -INFINITY;
                tile_max = fmaxf(tile_max, x[i]);
            }
            const float m_new = fmaxf(m[r], warp_max(tile_max));
            // Reference for the exponentials: 0 while nothing is visible (m_new = -inf), so
            // both e^(x - ref) and e^(m - ref) are e^(-inf) = 0 and never NaN.
            const float ref = m_new == -INFINITY ? 0.0f : m_new;
            const float correction = expf(m[r] - ref);
            float p_sum = 0.0f;
            bf16* prow = p_tile + row * L.ld.prob;
#pragma unroll
            for (int i = 0; i < kColsPerLane; ++i) {
                const float p = expf(x[i] - ref);  // exactly 0 where masked
                p_sum += p;
                prow[lane + i * kWarpSize] = __float2bfloat16_rn(p);
            }
            l[r] = l[r] * correction + warp_sum(p_sum);
            m[r] = m_new;
            float* orow = o_acc + row * L.ld.acc;
            for (int d = lane; d < hs; d += kWarpSize) orow[d] *= correction;
        }
        __syncwarp();  // P and the rescaled O rows are visible to the whole warp

        // O_w += P_w · V_tile, one 16-column block of O at a time.
        for (int n = 0; n < hs; n += kFrag) {
            mma_accumulate_tile(o_acc + w0 * L.ld.acc + n, L.ld.acc, p_tile + w0 * L.ld.prob,
                                L.ld.prob, v_tile + n, L.ld.in);
        }
    }
    __syncwarp();  // the warp's last O stores are visible to all its lanes

#pragma unroll
    for (int r = 0; r < kFrag; ++r) {
        const int t = q0 + w0 + r;
        if (t >= T) continue;  // tile padding (uniform over the warp)
        // l > 0: key 0 is visible to every real row and lies in the first tile walked.
        const float inv = 1.0f / l[r];
        const float* orow = o_acc + (w0 + r) * L.ld.acc;
        float* o = out + (static_cast<std::size_t>(blk.b) * T + t) * C + blk.h * hs;
        for (int d = lane; d < hs; d += kWarpSize) o[d] = orow[d] * inv;
        if (lane == 0) lse[static_cast<std::size_t>(blk.pair) * T + t] = m[r] + logf(l[r]);
    }
}

// dq_t += scale · Σ_s dS_ts·k_s for the query tile [q0, q0 + kTile); grid = B·H·tiles blocks
// of kThreads, DqSmem(hs).bytes of dynamic shared memory.
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_bf16_kernel(float* dqkv, const bf16* q_s, const bf16* k,
                                      const bf16* v, const bf16* dy, const float* lse,
                                      const float* delta, int T, int C, int H, int hs,
                                      float scale, bool causal, int tiles) {
    extern __shared__ __align__(kRegionAlign) unsigned char smem[];
    const DqSmem L(hs);
    bf16* q_tile = region<bf16>(smem, L.q);
    bf16* dy_tile = region<bf16>(smem, L.dy);
    bf16* k_tile = region<bf16>(smem, L.k);
    bf16* v_tile = region<bf16>(smem, L.v);
    bf16* ds_tile = region<bf16>(smem, L.ds);
    float* dq_acc = region<float>(smem, L.dq);
    float* lse_rows = region<float>(smem, L.lse);
    float* delta_rows = region<float>(smem, L.delta);

    const BlockTile blk(H, tiles);
    const int q0 = blk.r0;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int w0 = warp * kFrag;
    const std::size_t head = static_cast<std::size_t>(blk.pair) * T * hs;
    const std::size_t stats = static_cast<std::size_t>(blk.pair) * T;  // [B,H,T] offset
    float* s_frag = region<float>(smem, L.scratch) + warp * 2 * kFragElems;  // warp's 16×16 S
    float* dp_frag = s_frag + kFragElems;                                    // and dP

    load_tile(q_tile, L.ld.in, q_s + head, q0, T, hs);
    load_tile(dy_tile, L.ld.in, dy + head, q0, T, hs);
    load_row_stats(lse_rows, lse + stats, q0, T);
    load_row_stats(delta_rows, delta + stats, q0, T);
    zero_floats(dq_acc, kTile * L.ld.acc);

    const int kv_end = causal ? (q0 + kTile < T ? q0 + kTile : T) : T;
    for (int k0 = 0; k0 < kv_end; k0 += kTile) {
        __syncthreads();  // the previous K, V tiles are consumed (Q, dO, stats staged, first time)
        load_tile(k_tile, L.ld.in, k + head, k0, T, hs);
        load_tile(v_tile, L.ld.in, v + head, k0, T, hs);
        __syncthreads();

        // dS[w0:w0+16, 16j:16j+16] for each fragment column j of the key tile.
        for (int j = 0; j < kFragsPerTile; ++j) {
            FragAcc acc;
            mma_rows_by_rows(acc, q_tile + w0 * L.ld.in, L.ld.in,
                             k_tile + j * kFrag * L.ld.in, L.ld.in, hs);
            wmma::store_matrix_sync(s_frag, acc, kFrag, wmma::mem_row_major);
            mma_rows_by_rows(acc, dy_tile + w0 * L.ld.in, L.ld.in,
                             v_tile + j * kFrag * L.ld.in, L.ld.in, hs);
            wmma::store_matrix_sync(dp_frag, acc, kFrag, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < kFragElems; e += kWarpSize) {
                const int row = w0 + e / kFrag;         // query row in the tile
                const int col = j * kFrag + e % kFrag;  // key column in the tile
                float ds = 0.0f;
                if (visible(k0 + col, q0 + row, T, causal)) {
                    const float p = expf(s_frag[e] - lse_rows[row]);
                    ds = p * (dp_frag[e] - delta_rows[row]);
                }
                ds_tile[row * L.ld.prob + col] = __float2bfloat16_rn(ds);
            }
            __syncwarp();  // dS visible; the scratch may be overwritten
        }

        // dQ_w += dS_w · K_tile
        for (int n = 0; n < hs; n += kFrag) {
            mma_accumulate_tile(dq_acc + w0 * L.ld.acc + n, L.ld.acc, ds_tile + w0 * L.ld.prob,
                                L.ld.prob, k_tile + n, L.ld.in);
        }
    }
    __syncwarp();

    const std::size_t stride = 3 * static_cast<std::size_t>(C);
    for (int r = 0; r < kFrag; ++r) {
        const int t = q0 + w0 + r;
        if (t >= T) break;  // later rows are padding too (uniform over the warp)
        const float* row = dq_acc + (w0 + r) * L.ld.acc;
        float* dq = dqkv + (static_cast<std::size_t>(blk.b) * T + t) * stride + blk.h * hs;
        for (int d = lane; d < hs; d += kWarpSize) dq[d] += scale * row[d];
    }
}

// dk_s += Σ_t dS_ts·q_s_t, dv_s += Σ_t P_ts·dout_t for the key tile [k0, k0 + kTile);
// grid = B·H·tiles blocks of kThreads, DkdvSmem(hs).bytes of dynamic shared memory.
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_bf16_kernel(float* dqkv, const bf16* q_s, const bf16* k,
                                        const bf16* v, const bf16* dy, const float* lse,
                                        const float* delta, int T, int C, int H, int hs,
                                        bool causal, int tiles) {
    extern __shared__ __align__(kRegionAlign) unsigned char smem[];
    const DkdvSmem L(hs);
    bf16* k_tile = region<bf16>(smem, L.k);
    bf16* v_tile = region<bf16>(smem, L.v);
    bf16* q_tile = region<bf16>(smem, L.q);
    bf16* dy_tile = region<bf16>(smem, L.dy);
    bf16* p_tile = region<bf16>(smem, L.p);    // Pᵀ [key, query]
    bf16* ds_tile = region<bf16>(smem, L.ds);  // dSᵀ [key, query]
    float* dk_acc = region<float>(smem, L.dk);
    float* dv_acc = region<float>(smem, L.dv);
    float* lse_rows = region<float>(smem, L.lse);      // of the current query tile
    float* delta_rows = region<float>(smem, L.delta);  // of the current query tile

    const BlockTile blk(H, tiles);
    const int k0 = blk.r0;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int w0 = warp * kFrag;
    const std::size_t head = static_cast<std::size_t>(blk.pair) * T * hs;
    const std::size_t stats = static_cast<std::size_t>(blk.pair) * T;
    float* s_frag = region<float>(smem, L.scratch) + warp * 2 * kFragElems;  // Sᵀ 16×16
    float* dp_frag = s_frag + kFragElems;                                    // dPᵀ 16×16

    load_tile(k_tile, L.ld.in, k + head, k0, T, hs);
    load_tile(v_tile, L.ld.in, v + head, k0, T, hs);
    zero_floats(dk_acc, kTile * L.ld.acc);
    zero_floats(dv_acc, kTile * L.ld.acc);

    // Queries before k0 see none of these keys when causal (tiles are aligned: t0 = k0 is a
    // tile start).
    for (int t0 = causal ? k0 : 0; t0 < T; t0 += kTile) {
        __syncthreads();  // the previous query tile is consumed (K, V staged, the first time)
        load_tile(q_tile, L.ld.in, q_s + head, t0, T, hs);
        load_tile(dy_tile, L.ld.in, dy + head, t0, T, hs);
        load_row_stats(lse_rows, lse + stats, t0, T);
        load_row_stats(delta_rows, delta + stats, t0, T);
        __syncthreads();

        // Pᵀ, dSᵀ[w0:w0+16, 16j:16j+16] for each fragment column j of the query tile.
        for (int j = 0; j < kFragsPerTile; ++j) {
            FragAcc acc;
            mma_rows_by_rows(acc, k_tile + w0 * L.ld.in, L.ld.in,
                             q_tile + j * kFrag * L.ld.in, L.ld.in, hs);
            wmma::store_matrix_sync(s_frag, acc, kFrag, wmma::mem_row_major);
            mma_rows_by_rows(acc, v_tile + w0 * L.ld.in, L.ld.in,
                             dy_tile + j * kFrag * L.ld.in, L.ld.in, hs);
            wmma::store_matrix_sync(dp_frag, acc, kFrag, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < kFragElems; e += kWarpSize) {
                const int row = w0 + e / kFrag;         // key row in the tile
                const int col = j * kFrag + e % kFrag;  // query column in the tile
                float p = 0.0f, ds = 0.0f;
                if (visible(k0 + row, t0 + col, T, causal)) {
                    p = expf(s_frag[e] - lse_rows[col]);
                    ds = p * (dp_frag[e] - delta_rows[col]);
                }
                p_tile[row * L.ld.prob + col] = __float2bfloat16_rn(p);
                ds_tile[row * L.ld.prob + col] = __float2bfloat16_rn(ds);
            }
            __syncwarp();  // Pᵀ, dSᵀ visible; the scratch may be overwritten
        }

        // dV_w += Pᵀ_w · dO_tile;  dK_w += dSᵀ_w · Q_s_tile
        for (int n = 0; n < hs; n += kFrag) {
            mma_accumulate_tile(dv_acc + w0 * L.ld.acc + n, L.ld.acc, p_tile + w0 * L.ld.prob,
                                L.ld.prob, dy_tile + n, L.ld.in);
            mma_accumulate_tile(dk_acc + w0 * L.ld.acc + n, L.ld.acc, ds_tile + w0 * L.ld.prob,
                                L.ld.prob, q_tile + n, L.ld.in);
        }
    }
    __syncwarp();

    const std::size_t stride = 3 * static_cast<std::size_t>(C);
    for (int r = 0; r < kFrag; ++r) {
        const int s = k0 + w0 + r;
        if (s >= T) break;  // later rows are padding too (uniform over the warp)
        const float* dk_row = dk_acc + (w0 + r) * L.ld.acc;
        const float* dv_row = dv_acc + (w0 + r) * L.ld.acc;
        float* dk = dqkv + (static_cast<std::size_t>(blk.b) * T + s) * stride + C + blk.h * hs;
        float* dv = dk + C;
        for (int d = lane; d < hs; d += kWarpSize) {
            dk[d] += dk_row[d];
            dv[d] += dv_row[d];
        }
    }
}

// ---- host side ----------------------------------------------------------------------------

// The bf16 copies of q·scale, k, v (and dout) in one scratch block: [B,H,T,hs] each.
struct Operands {
    DeviceScratch memory;
    bf16 *q_s, *k, *v, *dy;  // dy null when not asked for
    Operands(CachingAllocator& allocator, std::size_t n, bool with_dout)
        : memory(allocator, (with_dout ? 4 : 3) * n * sizeof(bf16)),
          q_s(static_cast<bf16*>(static_cast<void*>(memory.floats()))),
          k(q_s + n),
          v(k + n),
          // n·2 bytes is a multiple of 32 (hs is a multiple of 16), so every array starts
          // 16-byte aligned for the uint4 tile copies (the block itself is 256-aligned).
          dy(with_dout ? v + n : nullptr) {}
};

void launch_prepare(CudaState& state, const Operands& ops, float* delta, const float* qkv,
                    const float* dout, const float* out, int B, int T, int C, int H, int hs,
                    float scale) {
    const std::int64_t rows = static_cast<std::int64_t>(B) * H * T;
    const unsigned blocks = static_cast<unsigned>((rows + kPrepareWarps - 1) / kPrepareWarps);
    attention_bf16_prepare_kernel<<<blocks, kPrepareWarps * kWarpSize, 0, state.stream>>>(
        ops.q_s, ops.k, ops.v, ops.dy, delta, qkv, dout, out, B, T, C, H, hs, scale);
    CUDA_CHECK(cudaGetLastError());
}

// Lets `kernel` use `bytes` of dynamic shared memory, and asks for the largest shared
// memory carve-out of the SM's unified L1/shared storage (these kernels keep their tiles
// there, so more blocks fit per SM). The attributes belong to the function on the current
// device; setting them before each launch (as FlashAttention does) is cheap, needs no
// bookkeeping and stays right whatever device is current.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, std::size_t bytes) {
    UPCYCLE_ASSERT(bytes <= kMaxSmemPerBlock, "attention (bf16): shared memory over 227 KB");
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    static_cast<int>(cudaSharedmemCarveoutMaxShared)));
}

struct Launch {
    int hs, tiles;
    float scale;
    unsigned blocks;
    Launch(int B, int T, int C, int H)
        : hs(C / H),
          tiles((T + kTile - 1) / kTile),
          scale(1.0f / std::sqrt(static_cast<float>(hs))),
          blocks(static_cast<unsigned>(static_cast<std::int64_t>(B) * H * tiles)) {}
};

}  // namespace

bool attention_bf16_supported(int C, int H) {
    if (H <= 0 || C <= 0 || C % H != 0) return false;
    const int hs = C / H;
    return hs % kFrag == 0 && hs <= kMaxHeadSize;
}

void attention_forward_bf16(CudaState& state, float* out, float* lse, const float* qkv, int B,
                            int T, int C, int H, bool causal) {
    UPCYCLE_ASSERT(attention_bf16_supported(C, H),
                   "attention (bf16): head size C/H must be a multiple of 16, at most 128");
    if (B <= 0 || T <= 0) return;
    const Launch ln(B, T, C, H);
    const std::size_t n = static_cast<std::size_t>(B) * H * T * ln.hs;
    const Operands ops(state.allocator, n, /*with_dout=*/false);
    launch_prepare(state, ops, nullptr, qkv, nullptr, nullptr, B, T, C, H, ln.hs, ln.scale);

    const std::size_t smem = ForwardSmem(ln.hs).bytes;
    allow_shared_memory(attention_forward_bf16_kernel, smem);
    attention_forward_bf16_kernel<<<ln.blocks, kThreads, smem, state.stream>>>(
        out, lse, ops.q_s, ops.k, ops.v, T, C, H, ln.hs, causal, ln.tiles);
    CUDA_CHECK(cudaGetLastError());
}

void attention_backward_bf16(CudaState& state, float* dqkv, const float* dout, const float* qkv,
                             const float* out, const float* lse, int B, int T, int C, int H,
                             bool causal) {
    UPCYCLE_ASSERT(attention_bf16_supported(C, H),
                   "attention (bf16): head size C/H must be a multiple of 16, at most 128");
    if (B <= 0 || T <= 0) return;
    const Launch ln(B, T, C, H);
    const std::size_t rows = static_cast<std::size_t>(B) * H * T;
    const Operands ops(state.allocator, rows * ln.hs, /*with_dout=*/true);
    DeviceScratch delta(state.allocator, rows * sizeof(float));
    launch_prepare(state, ops, delta.floats(), qkv, dout, out, B, T, C, H, ln.hs, ln.scale);

    const std::size_t dq_smem = DqSmem(ln.hs).bytes;
    allow_shared_memory(attention_backward_dq_bf16_kernel, dq_smem);
    attention_backward_dq_bf16_kernel<<<ln.blocks, kThreads, dq_smem, state.stream>>>(
        dqkv, ops.q_s, ops.k, ops.v, ops.dy, lse, delta.floats(), T, C, H, ln.hs, ln.scale,
        causal, ln.tiles);
    CUDA_CHECK(cudaGetLastError());

    const std::size_t dkdv_smem = DkdvSmem(ln.hs).bytes;
    allow_shared_memory(attention_backward_dkdv_bf16_kernel, dkdv_smem);
    attention_backward_dkdv_bf16_kernel<<<ln.blocks, kThreads, dkdv_smem, state.stream>>>(
        dqkv, ops.q_s, ops.k, ops.v, ops.dy, lse, delta.floats(), T, C, H, ln.hs, causal,
        ln.tiles);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
