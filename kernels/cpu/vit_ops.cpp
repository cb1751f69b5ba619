// Vision ops: patch rows from images, token assembly (class token + positions) and the
// class-token gather. All are rearrangements or sums over the batch; the backward sums run
// over b in order inside each output element, so results do not depend on the thread count.
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr std::int64_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::patch_embed_input(float* out, const float* images, int B, int H, int W,
                                   int p) {
    const int gy = H / p, gx = W / p, P = gy * gx, pp = p * p;
    const int rows = B * P;
#pragma omp parallel for schedule(static) if (static_cast<std::int64_t>(rows) * pp >= kParallelMin)
    for (int r = 0; r < rows; ++r) {
        const int b = r / P, i = r % P;
        const int py = i / gx, px = i % gx;
        const float* img = images + static_cast<std::size_t>(b) * H * W;
        float* o = out + static_cast<std::size_t>(r) * pp;
        for (int y = 0; y < p; ++y) {
            const float* src = img + static_cast<std::size_t>(py * p + y) * W + px * p;
            for (int x = 0; x < p; ++x) o[y * p + x] = src[x];
        }
    }
}

void CpuBackend::assemble_tokens(float* out, const float* patch_emb, const float* cls,
                                 const float* wpe, int B, int P, int C) {
    const int T = 1 + P, N = B * T;
#pragma omp parallel for schedule(static) if (static_cast<std::int64_t>(N) * C >= kParallelMin)
    for (int n = 0; n < N; ++n) {
        const int b = n / T, t = n % T;
        const float* src = t == 0 ? cls : patch_emb + (static_cast<std::size_t>(b) * P + t - 1) * C;
        const float* pe = wpe + static_cast<std::size_t>(t) * C;
        float* o = out + static_cast<std::size_t>(n) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = src[c] + pe[c];
    }
}

void CpuBackend::assemble_tokens_backward(float* dpatch_emb, float* dcls, float* dwpe,
                                          const float* dout, int B, int P, int C) {
    const int T = 1 + P;
    const bool parallel = static_cast<std::int64_t>(B) * T * C >= kParallelMin;
    if (dpatch_emb) {
        const int rows = B * P;
#pragma omp parallel for schedule(static) if (parallel)
        for (int r = 0; r < rows; ++r) {
            const int b = r / P, i = r % P;
            const float* d = dout + (static_cast<std::size_t>(b) * T + 1 + i) * C;
            float* o = dpatch_emb + static_cast<std::size_t>(r) * C;
#pragma omp simd
            for (int c = 0; c < C; ++c) o[c] += d[c];
        }
    }
    if (dwpe || dcls) {
        // one position per iteration; inside it, b runs in order
#pragma omp parallel for schedule(static) if (parallel)
        for (int t = 0; t < T; ++t) {
            float* pw = dwpe ? dwpe + static_cast<std::size_t>(t) * C : nullptr;
            float* pc = t == 0 ? dcls : nullptr;
            for (int b = 0; b < B; ++b) {
                const float* d = dout + (static_cast<std::size_t>(b) * T + t) * C;
                if (pw) {
#pragma omp simd
                    for (int c = 0; c < C; ++c) pw[c] += d[c];
                }
                if (pc) {
#pragma omp simd
                    for (int c = 0; c < C; ++c) pc[c] += d[c];
                }
            }
        }
    }
}

void CpuBackend::gather_class_tokens(float* out, const float* x, int B, int T, int C) {
    for (int b = 0; b < B; ++b) {
        const float* src = x + static_cast<std::size_t>(b) * T * C;
        float* o = out + static_cast<std::size_t>(b) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = src[c];
    }
}

void CpuBackend::scatter_class_tokens(float* dx, const float* dout, int B, int T, int C) {
    for (int b = 0; b < B; ++b) {
        float* d = dx + static_cast<std::size_t>(b) * T * C;
        const float* g = dout + static_cast<std::size_t>(b) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) d[c] += g[c];
    }
}

}  // namespace upcycle
