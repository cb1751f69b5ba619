// Multi-head self-attention core on the GPU, flash style: memory linear in T (no T×T
// buffer), the forward saves each query row's log-sum-exp and the backward recomputes the
// probabilities from it. Specification: kernels/cpu/attention.cpp.
//
// Scores are those of the CPU: S_ts = (q_t·scale)·k_s with scale = 1/√hs (q scaled first),
// masked to s ≤ t when causal; lse_t = log Σ_s exp(S_ts) of the SCALED scores.
//
// Layout: qkv[B,T,3C] (q, k, v stacked; head h owns columns [h·hs, (h+1)·hs) of each),
// out/dout[B,T,C], lse[B,H,T]. Head size hs = C/H must be at most kMaxHeadSize (128).
//
// Every kernel runs blocks of kRowsPerBlock warps, one warp per output row (a query row for
// the forward and dq, a key row for dk/dv) of one (batch, head) pair. The block walks the
// other side in tiles of 32 rows staged in shared memory; within a tile lane j owns row j
// (its score is a dot product over the head dimension), and lane i owns the output
// dimensions d = i + 32·r. So each output row is produced by one warp alone, in an order
// fixed by the shapes: no atomics, deterministic.
//
// Forward (per query t, online softmax over key tiles):
//   m' = max(m, max_j S_tj);  l = l·e^(m-m') + Σ_j e^(S_tj-m');  acc = acc·e^(m-m') + Σ_j e^(S_tj-m')·v_j
//   out_t = acc / l;  lse_t = m + log l
// Backward, with P_ts = exp(S_ts - lse_t), dP_ts = dout_t·v_s, D_t = dout_t·out_t
// (= Σ_s P_ts·dP_ts, the CPU's form), dS_ts = P_ts·(dP_ts - D_t):
//   1. D[B,H,T] into scratch: one warp per query row;
//   2. dq_t += scale · Σ_s dS_ts·k_s            one warp per query row, walking key tiles;
//   3. dk_s += Σ_t dS_ts·(q_t·scale),  dv_s += Σ_t P_ts·dout_t
//                                                one warp per key row, walking query tiles
//                                                (t ≥ s only when causal).
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/errors.h"
#include "kernels/cuda/attention_bf16.cuh"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_state.cuh"

namespace upcycle {

namespace {

using gpu::DeviceScratch;
using gpu::kFullMask;
using gpu::kWarpSize;
using gpu::warp_max;
using gpu::warp_sum;

constexpr int kMaxHeadSize = 128;
constexpr int kDimsPerLane = kMaxHeadSize / kWarpSize;  // output dims held by one lane
constexpr int kTile = kWarpSize;                         // rows per staged tile, one per lane
// Padded row stride of a staged tile: lane j reading element c of row j hits bank
// (j + c) mod 32, so the per-lane dot products are free of bank conflicts.
constexpr int kTileStride = kMaxHeadSize + 1;
constexpr int kRowsPerBlock = 8;  // output rows per block, one warp each
constexpr int kThreads = kRowsPerBlock * kWarpSize;

// a·b over hs elements, in ascending order (the same expression in every kernel, so the
// recomputed scores match the forward's bit for bit).
__device__ float dot(const float* a, const float* b, int hs) {
    float acc = 0.0f;
    for (int c = 0; c < hs; ++c) acc += a[c] * b[c];
    return acc;
}

// Stages rows [r0, r0 + kTile) of a [T, stride] matrix's hs columns at src into a padded
// tile, times factor; rows at or beyond T are zeros. Called by the whole block.
__device__ void stage_tile(float* tile, const float* src, std::size_t stride, int r0, int T,
                           int hs, float factor) {
    for (int i = static_cast<int>(threadIdx.x); i < kTile * hs; i += kThreads) {
        const int j = i / hs;
        const int c = i % hs;
        const int r = r0 + j;
        tile[j * kTileStride + c] =
            r < T ? src[static_cast<std::size_t>(r) * stride + c] * factor : 0.0f;
    }
}

// Which (batch, head) pair and which block of kRowsPerBlock rows this block handles.
struct BlockRows {
    int pair, b, h, r0;
    __device__ BlockRows(int H, int row_blocks)
        : pair(static_cast<int>(blockIdx.x) / row_blocks),
          b(pair / H),
          h(pair % H),
          r0(static_cast<int>(blockIdx.x) % row_blocks * kRowsPerBlock) {}
};

// out[b,t,head] and lse[b,h,t]; grid = B·H·row_blocks blocks of kThreads.
__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int T, int C,
                                         int H, int hs, float scale, bool causal,
                                         int row_blocks) {
    __shared__ float k_tile[kTile * kTileStride];
    __shared__ float v_tile[kTile * kTileStride];
    __shared__ float q_rows[kRowsPerBlock * kMaxHeadSize];

    const BlockRows blk(H, row_blocks);
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int t = blk.r0 + warp;
    const bool active = t < T;  // uniform over the warp
    const std::size_t stride = 3 * static_cast<std::size_t>(C);
    const float* q_base = qkv + static_cast<std::size_t>(blk.b) * T * stride + blk.h * hs;
    const float* k_base = q_base + C;
    const float* v_base = q_base + 2 * C;

    float* q = q_rows + warp * kMaxHeadSize;  // this warp's query row, scaled
    if (active) {
        for (int c = lane; c < hs; c += kWarpSize) {
            q[c] = q_base[static_cast<std::size_t>(t) * stride + c] * scale;
        }
    }
    // keys the block needs: all, or up to its last query row when causal
    const int last_row = (blk.r0 + kRowsPerBlock < T ? blk.r0 + kRowsPerBlock : T) - 1;
    const int kv = causal ? last_row + 1 : T;

    float m = -INFINITY;  // running max of the scores seen
    float l = 0.0f;       // running Σ exp(score - m)
    float acc[kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) acc[r] = 0.0f;

    for (int s0 = 0; s0 < kv; s0 += kTile) {
        __syncthreads();  // the previous tile is consumed (and q is staged, the first time)
        stage_tile(k_tile, k_base, stride, s0, T, hs, 1.0f);
        stage_tile(v_tile, v_base, stride, s0, T, hs, 1.0f);
        __syncthreads();
        // Whole warps skip. Every processed tile holds a valid key (the first holds key 0),
        // so m is finite from the first processed tile on and e^(m - m') never sees -inf - -inf.
        if (!active || (causal && s0 > t)) continue;

        const int s = s0 + lane;
        const bool valid = s < T && (!causal || s <= t);
        const float score = valid ? dot(q, k_tile + lane * kTileStride, hs) : -INFINITY;
        const float m_new = fmaxf(m, warp_max(score));
        const float correction = expf(m - m_new);
        const float p = valid ? expf(score - m_new) : 0.0f;
        l = l * correction + warp_sum(p);
#pragma unroll
        for (int r = 0; r < kDimsPerLane; ++r) acc[r] *= correction;
        for (int j = 0; j < kTile; ++j) {
            const float pj = __shfl_sync(kFullMask, p, j);
            const float* vj = v_tile + j * kTileStride;
#pragma unroll
            for (int r = 0; r < kDimsPerLane; ++r) {
                const int d = lane + r * kWarpSize;
                if (d < hs) acc[r] += pj * vj[d];
            }
        }
        m = m_new;
    }

    if (!active) return;
    const float inv = 1.0f / l;
    float* o = out + (static_cast<std::size_t>(blk.b) * T + t) * C + blk.h * hs;
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
        const int d = lane + r * kWarpSize;
        if (d < hs) o[d] = acc[r] * inv;
    }
    if (lane == 0) lse[static_cast<std::size_t>(blk.pair) * T + t] = m + logf(l);
}

// delta[b,h,t] = dout[b,t,head]·out[b,t,head]; one warp per (b,h,t), kRowsPerBlock per block.
__global__ void attention_delta_kernel(float* delta, const float* dout, const float* out, int B,
                                       int T, int C, int H, int hs) {
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock +
                             static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    if (row >= static_cast<std::int64_t>(B) * H * T) return;  // the whole warp leaves together
    const std::int64_t pair = row / T;
    const int t = static_cast<int>(row % T);
    const int b = static_cast<int>(pair / H);
    const int h = static_cast<int>(pair % H);
    const std::size_t offset = (static_cast<std::size_t>(b) * T + t) * C + h * hs;
    float acc = 0.0f;
    for (int d = lane; d < hs; d += kWarpSize) acc += dout[offset + d] * out[offset + d];
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

// dq_t += scale · Σ_s dS_ts·k_s; one warp per query row, walking key tiles.
__global__ void attention_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv,
                                             const float* lse, const float* delta, int T, int C,
                                             int H, int hs, float scale, bool causal,
                                             int row_blocks) {
    __shared__ float k_tile[kTile * kTileStride];
    __shared__ float v_tile[kTile * kTileStride];
    __shared__ float q_rows[kRowsPerBlock * kMaxHeadSize];
    __shared__ float dy_rows[kRowsPerBlock * kMaxHeadSize];

    const BlockRows blk(H, row_blocks);
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int t = blk.r0 + warp;
    const bool active = t < T;  // uniform over the warp
    const std::size_t stride = 3 * static_cast<std::size_t>(C);
    const float* q_base = qkv + static_cast<std::size_t>(blk.b) * T * stride + blk.h * hs;
    const float* k_base = q_base + C;
    const float* v_base = q_base + 2 * C;
    const float* dy_base = dout + static_cast<std::size_t>(blk.b) * T * C + blk.h * hs;

    float* q = q_rows + warp * kMaxHeadSize;    // scaled
    float* dy = dy_rows + warp * kMaxHeadSize;  // dout row
    float lse_t = 0.0f, delta_t = 0.0f;
    if (active) {
        for (int c = lane; c < hs; c += kWarpSize) {
            q[c] = q_base[static_cast<std::size_t>(t) * stride + c] * scale;
            dy[c] = dy_base[static_cast<std::size_t>(t) * C + c];
        }
        lse_t = lse[static_cast<std::size_t>(blk.pair) * T + t];
        delta_t = delta[static_cast<std::size_t>(blk.pair) * T + t];
    }
    const int last_row = (blk.r0 + kRowsPerBlock < T ? blk.r0 + kRowsPerBlock : T) - 1;
    const int kv = causal ? last_row + 1 : T;

    float acc[kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) acc[r] = 0.0f;

    for (int s0 = 0; s0 < kv; s0 += kTile) {
        __syncthreads();  // the previous tile is consumed (and q, dout staged, the first time)
        stage_tile(k_tile, k_base, stride, s0, T, hs, 1.0f);
        stage_tile(v_tile, v_base, stride, s0, T, hs, 1.0f);
        __syncthreads();
        if (!active || (causal && s0 > t)) continue;  // whole warps skip

        const int s = s0 + lane;
        const bool valid = s < T && (!causal || s <= t);
        float ds = 0.0f;
        if (valid) {
            const float p = expf(dot(q, k_tile + lane * kTileStride, hs) - lse_t);
            const float dp = dot(dy, v_tile + lane * kTileStride, hs);
            ds = p * (dp - delta_t);
        }
        for (int j = 0; j < kTile; ++j) {
            const float dsj = __shfl_sync(kFullMask, ds, j);
            const float* kj = k_tile + j * kTileStride;
#pragma unroll
            for (int r = 0; r < kDimsPerLane; ++r) {
                const int d = lane + r * kWarpSize;
                if (d < hs) acc[r] += dsj * kj[d];
            }
        }
    }

    if (!active) return;
    float* dq = dqkv + (static_cast<std::size_t>(blk.b) * T + t) * stride + blk.h * hs;
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
        const int d = lane + r * kWarpSize;
        if (d < hs) dq[d] += scale * acc[r];
    }
}

// dk_s += Σ_t dS_ts·(q_t·scale);  dv_s += Σ_t P_ts·dout_t; one warp per key row, walking
// query tiles (from the block's first key when causal: earlier queries cannot see it).
__global__ void attention_backward_dkdv_kernel(float* dqkv, const float* dout, const float* qkv,
                                               const float* lse, const float* delta, int T,
                                               int C, int H, int hs, float scale, bool causal,
                                               int row_blocks) {
    __shared__ float q_tile[kTile * kTileStride];  // scaled
    __shared__ float dy_tile[kTile * kTileStride];
    __shared__ float lse_tile[kTile];
    __shared__ float delta_tile[kTile];
    __shared__ float k_rows[kRowsPerBlock * kMaxHeadSize];
    __shared__ float v_rows[kRowsPerBlock * kMaxHeadSize];

    const BlockRows blk(H, row_blocks);
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int s = blk.r0 + warp;
    const bool active = s < T;  // uniform over the warp
    const std::size_t stride = 3 * static_cast<std::size_t>(C);
    const float* q_base = qkv + static_cast<std::size_t>(blk.b) * T * stride + blk.h * hs;
    const float* k_base = q_base + C;
    const float* v_base = q_base + 2 * C;
    const float* dy_base = dout + static_cast<std::size_t>(blk.b) * T * C + blk.h * hs;
    const float* lse_bh = lse + static_cast<std::size_t>(blk.pair) * T;
    const float* delta_bh = delta + static_cast<std::size_t>(blk.pair) * T;

    float* k = k_rows + warp * kMaxHeadSize;
    float* v = v_rows + warp * kMaxHeadSize;
    if (active) {
        for (int c = lane; c < hs; c += kWarpSize) {
            k[c] = k_base[static_cast<std::size_t>(s) * stride + c];
            v[c] = v_base[static_cast<std::size_t>(s) * stride + c];
        }
    }

    float dk_acc[kDimsPerLane], dv_acc[kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
        dk_acc[r] = 0.0f;
        dv_acc[r] = 0.0f;
    }

    for (int t0 = causal ? blk.r0 : 0; t0 < T; t0 += kTile) {
        __syncthreads();  // the previous tile is consumed (and k, v staged, the first time)
        stage_tile(q_tile, q_base, stride, t0, T, hs, scale);
        stage_tile(dy_tile, dy_base, static_cast<std::size_t>(C), t0, T, hs, 1.0f);
        if (threadIdx.x < kTile) {
            const int t = t0 + static_cast<int>(threadIdx.x);
            lse_tile[threadIdx.x] = t < T ? lse_bh[t] : 0.0f;
            delta_tile[threadIdx.x] = t < T ? delta_bh[t] : 0.0f;
        }
        __syncthreads();
        if (!active || (causal && t0 + kTile - 1 < s)) continue;  // whole warps skip

        const int t = t0 + lane;
        const bool valid = t < T && (!causal || t >= s);
        float p = 0.0f, ds = 0.0f;
        if (valid) {
            p = expf(dot(q_tile + lane * kTileStride, k, hs) - lse_tile[lane]);
            const float dp = dot(dy_tile + lane * kTileStride, v, hs);
            ds = p * (dp - delta_tile[lane]);
        }
        for (int j = 0; j < kTile; ++j) {
            const float pj = __shfl_sync(kFullMask, p, j);
            const float dsj = __shfl_sync(kFullMask, ds, j);
            const float* qj = q_tile + j * kTileStride;
            const float* dyj = dy_tile + j * kTileStride;
#pragma unroll
            for (int r = 0; r < kDimsPerLane; ++r) {
                const int d = lane + r * kWarpSize;
                if (d < hs) {
                    dk_acc[r] += dsj * qj[d];
                    dv_acc[r] += pj * dyj[d];
                }
            }
        }
    }

    if (!active) return;
    float* dk = dqkv + (static_cast<std::size_t>(blk.b) * T + s) * stride + C + blk.h * hs;
    float* dv = dk + C;
#pragma unroll
    for (int r = 0; r < kDimsPerLane; ++r) {
        const int d = lane + r * kWarpSize;
        if (d < hs) {
            dk[d] += dk_acc[r];
            dv[d] += dv_acc[r];
        }
    }
}

// Head size and scale, checked: hs = C/H within kMaxHeadSize.
int head_size(int C, int H) {
    UPCYCLE_ASSERT(H > 0 && C % H == 0, "attention: C must be a multiple of H");
    const int hs = C / H;
    UPCYCLE_ASSERT(hs <= kMaxHeadSize, "attention (CUDA): head size C/H must be at most 128");
    return hs;
}

}  // namespace

void CudaBackend::attention_forward(float* out, float* lse, const float* qkv, int B, int T,
                                    int C, int H, bool causal) {
    // bf16 precision: the tensor-core kernels of attention_bf16.cu, where they take the shape.
    if (precision_ == Precision::BF16 && attention_bf16_supported(C, H)) {
        attention_forward_bf16(*state_, out, lse, qkv, B, T, C, H, causal);
        return;
    }
    const int hs = head_size(C, H);
    if (B <= 0 || T <= 0 || hs <= 0) return;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const int row_blocks = (T + kRowsPerBlock - 1) / kRowsPerBlock;
    const unsigned blocks = static_cast<unsigned>(static_cast<std::int64_t>(B) * H * row_blocks);
    attention_forward_kernel<<<blocks, kThreads, 0, state_->stream>>>(out, lse, qkv, T, C, H, hs,
                                                                     scale, causal, row_blocks);
    CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::attention_backward(float* dqkv, const float* dout, const float* qkv,
                                     const float* out, const float* lse, int B, int T, int C,
                                     int H, bool causal) {
    if (precision_ == Precision::BF16 && attention_bf16_supported(C, H)) {
        attention_backward_bf16(*state_, dqkv, dout, qkv, out, lse, B, T, C, H, causal);
        return;
    }
    const int hs = head_size(C, H);
    if (B <= 0 || T <= 0 || hs <= 0) return;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const std::int64_t rows = static_cast<std::int64_t>(B) * H * T;
    DeviceScratch delta(state_->allocator, static_cast<std::size_t>(rows) * sizeof(float));

    const unsigned delta_blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    attention_delta_kernel<<<delta_blocks, kThreads, 0, state_->stream>>>(delta.floats(), dout,
                                                                         out, B, T, C, H, hs);
    CUDA_CHECK(cudaGetLastError());

    const int row_blocks = (T + kRowsPerBlock - 1) / kRowsPerBlock;
    const unsigned blocks = static_cast<unsigned>(static_cast<std::int64_t>(B) * H * row_blocks);
    attention_backward_dq_kernel<<<blocks, kThreads, 0, state_->stream>>>(
        dqkv, dout, qkv, lse, delta.floats(), T, C, H, hs, scale, causal, row_blocks);
    CUDA_CHECK(cudaGetLastError());
    attention_backward_dkdv_kernel<<<blocks, kThreads, 0, state_->stream>>>(
        dqkv, dout, qkv, lse, delta.floats(), T, C, H, hs, scale, causal, row_blocks);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace upcycle
