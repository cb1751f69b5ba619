// Linear layer in PyTorch nn.Linear layout on OpenBLAS sgemm (row-major):
//   forward   out[M,N]  = inp[M,K] · weight[N,K]^T + bias[N]
//   backward  dinp[M,K] += dout[M,N] · weight[N,K]
//             dweight[N,K] += dout^T · inp
//             dbias[N] += Σ_m dout[m,:]
// The forward writes the bias rows into out and lets sgemm accumulate on top (beta = 1):
// one pass over out, where beta = 0 plus a later bias add would be two.
//
// Precision::BF16 rounds both operands of every product to bfloat16 first (copies in
// per-thread scratch; kernels/cpu/bf16.h) and multiplies them in fp32: exactly what a
// tensor-core GEMM with bf16 inputs and fp32 accumulation computes, up to summation order.
// It is the specification of the CUDA backend's bf16 GEMMs, not a fast path.
//
// Every GEMM is cut into a grid of output tiles that depends only on the shape; an OpenMP
// loop hands the tiles out and each is one single-threaded cblas_sgemm (the OpenMP OpenBLAS
// runs one thread inside a parallel region). Two reasons, both measured on the gpt-tiny
// shapes: OpenBLAS's own threading gives results that change with the thread count (its
// partition of the work does), and for these small-K shapes it is 30-45% slower than the
// tiles. For large shapes the two are on par.
#include <cblas.h>
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/thread_buffer.h"

namespace upcycle {

namespace {

// Up to this many multiply-adds (M·N·K) a GEMM runs as one call, outside any parallel
// region; OpenBLAS itself stays single-threaded this small (its threshold is 4·65536).
constexpr std::int64_t kSerialMultiplyAdds = 1 << 16;
// Target work per tile: fewer, larger tiles pack less and run the kernels longer, but a
// grid needs enough tiles to keep the threads busy.
constexpr double kFlopsPerTile = 64e6;
constexpr int kMinTiles = 4;
constexpr int kMaxTiles = 16;
// Tiles are never cut below this many rows or columns.
constexpr int kMinTileEdge = 32;
// Tile edges are multiples of a cache line of floats.
constexpr int kTileAlign = 16;
// Column slices for dbias are whole cache lines so threads never share one.
constexpr int kColumnGrain = 16;
// Below this many output elements the bias fill and dbias are not worth a parallel region.
constexpr std::int64_t kParallelMin = 1 << 14;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int n, int multiple) { return ceil_div(n, multiple) * multiple; }

// The tile grid for an [M,N] output with reduction length K: halve the longer tile edge
// until there are enough tiles or the edges reach kMinTileEdge. A function of the shape
// only, so the results never depend on the thread count.
struct TileGrid {
    int tile_m, tile_n, tiles_m, tiles_n;
    TileGrid(int M, int N, int K) {
        const double flops = 2.0 * M * N * K;
        int target = static_cast<int>(flops / kFlopsPerTile);
        target = target < kMinTiles ? kMinTiles : (target > kMaxTiles ? kMaxTiles : target);
        int gm = 1, gn = 1;
        while (gm * gn < target) {
            const int edge_m = ceil_div(M, gm), edge_n = ceil_div(N, gn);
            const bool can_m = edge_m / 2 >= kMinTileEdge, can_n = edge_n / 2 >= kMinTileEdge;
            if (can_m && (edge_m >= edge_n || !can_n)) {
                gm *= 2;
            } else if (can_n) {
                gn *= 2;
            } else {
                break;
            }
        }
        tile_m = round_up(ceil_div(M, gm), kTileAlign);
        tile_n = round_up(ceil_div(N, gn), kTileAlign);
        tiles_m = ceil_div(M, tile_m);
        tiles_n = ceil_div(N, tile_n);
    }
};

// C[M,N] = alpha·op(A)·op(B) + beta·C, row-major; op(A) is [M,K], op(B) is [K,N].
void tiled_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int M, int N, int K, float alpha,
                 const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    if (static_cast<std::int64_t>(M) * N * K <= kSerialMultiplyAdds) {
        cblas_sgemm(CblasRowMajor, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const TileGrid grid(M, N, K);
    const int tiles = grid.tiles_m * grid.tiles_n;
#pragma omp parallel for schedule(static)
    for (int tile = 0; tile < tiles; ++tile) {
        const int m0 = tile / grid.tiles_n * grid.tile_m;
        const int n0 = tile % grid.tiles_n * grid.tile_n;
        const int rows = M - m0 < grid.tile_m ? M - m0 : grid.tile_m;
        const int cols = N - n0 < grid.tile_n ? N - n0 : grid.tile_n;
        // rows m0.. of op(A): rows of A, or columns of Aᵀ; columns n0.. of op(B) likewise
        const float* a = trans_a == CblasNoTrans ? A + static_cast<std::size_t>(m0) * lda : A + m0;
        const float* b = trans_b == CblasNoTrans ? B + n0 : B + static_cast<std::size_t>(n0) * ldb;
        cblas_sgemm(CblasRowMajor, trans_a, trans_b, rows, cols, K, alpha, a, lda, b, ldb, beta,
                    C + static_cast<std::size_t>(m0) * ldc + n0, ldc);
    }
}

// The two operands of a product as the precision sees them: the buffers themselves (fp32),
// or their bf16-rounded copies (each its own scratch, valid until the next product).
class GemmOperands {
public:
    GemmOperands(Precision precision, const float* a, std::size_t a_size, const float* b,
                 std::size_t b_size)
        : a_(a), b_(b) {
        if (precision != Precision::BF16) return;
        thread_local cpu::ThreadBuffer a_copy, b_copy;
        float* a_rounded = a_copy.get(a_size);
        float* b_rounded = b_copy.get(b_size);
        cpu::round_to_bf16(a_rounded, a, a_size);
        cpu::round_to_bf16(b_rounded, b, b_size);
        a_ = a_rounded;
        b_ = b_rounded;
    }
    const float* a() const { return a_; }
    const float* b() const { return b_; }

private:
    const float* a_;
    const float* b_;
};

std::size_t elements(int rows, int cols) {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
}

}  // namespace

void cpu::round_to_bf16(float* out, const float* in, std::size_t n) {
    const auto count = static_cast<std::int64_t>(n);
#pragma omp parallel for schedule(static) if (count >= kParallelMin)
    for (std::int64_t i = 0; i < count; ++i) out[i] = round_to_bf16(in[i]);
}

void CpuBackend::matmul_forward(float* out, const float* inp, const float* weight,
                                const float* bias, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    float beta = 0.0f;
    if (bias) {
        const std::size_t row_bytes = static_cast<std::size_t>(N) * sizeof(float);
#pragma omp parallel for schedule(static) if (static_cast <std::int64_t>(M) * N >= kParallelMin)
        for (int m = 0; m < M; ++m)
            std::memcpy(out + static_cast<std::size_t>(m) * N, bias, row_bytes);
        beta = 1.0f;
    }
    if (K <= 0) {
        if (!bias) std::memset(out, 0, static_cast<std::size_t>(M) * N * sizeof(float));
        return;
    }
    const GemmOperands ops(precision_, inp, elements(M, K), weight, elements(N, K));
    tiled_sgemm(CblasNoTrans, CblasTrans, M, N, K, 1.0f, ops.a(), K, ops.b(), K, beta, out, N);
}

void CpuBackend::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int M, int K, int N) {
    if (M <= 0 || N <= 0) return;
    if (K > 0) {
        if (dinp) {
            const GemmOperands ops(precision_, dout, elements(M, N), weight, elements(N, K));
            tiled_sgemm(CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, ops.a(), N, ops.b(), K, 1.0f,
                        dinp, K);
        }
        if (dweight) {
            const GemmOperands ops(precision_, dout, elements(M, N), inp, elements(M, K));
            tiled_sgemm(CblasTrans, CblasNoTrans, N, K, M, 1.0f, ops.a(), N, ops.b(), K, 1.0f,
                        dweight, K);
        }
    }
    if (dbias) {
        // Threads own column slices; each sums its columns over rows m = 0..M-1 in order,
        // in double (M reaches 8192 and more), so the result does not depend on the thread
        // count.
        const int grains = ceil_div(N, kColumnGrain);
#pragma omp parallel if (static_cast <std::int64_t>(M) * N >= kParallelMin)
        {
            const int nthreads = omp_get_num_threads();
            const int tid = omp_get_thread_num();
            const int g0 = static_cast<int>(static_cast<std::int64_t>(grains) * tid / nthreads);
            const int g1 =
                static_cast<int>(static_cast<std::int64_t>(grains) * (tid + 1) / nthreads);
            const int n0 = g0 * kColumnGrain;
            const int n1 = g1 * kColumnGrain < N ? g1 * kColumnGrain : N;
            if (n0 < n1) {
                thread_local std::vector<double> column_sums;
                column_sums.assign(static_cast<std::size_t>(n1 - n0), 0.0);
                double* acc = column_sums.data() - n0;  // indexed by n in [n0, n1)
                for (int m = 0; m < M; ++m) {
                    const float* row = dout + static_cast<std::size_t>(m) * N;
#pragma omp simd
                    for (int n = n0; n < n1; ++n) acc[n] += row[n];
                }
#pragma omp simd
                for (int n = n0; n < n1; ++n) dbias[n] += static_cast<float>(acc[n]);
            }
        }
    }
}

}  // namespace upcycle
