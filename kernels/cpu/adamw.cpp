// AdamW (decoupled weight decay, bias-corrected), one fused elementwise pass.
//
// sqrtf may set errno for a negative argument, which keeps GCC from vectorising a loop that
// calls it (without -fno-math-errno, and GCC 12 ignores that flag in `#pragma GCC optimize`),
// so with AVX-512 the loop body is written with intrinsics, 16 lanes at a time; the same
// arithmetic in scalar form (same fused multiply-adds) handles the tail and other CPUs.
// Thread slices start at multiples of 16, so which elements take the scalar path (the last
// n mod 16) does not depend on the thread count.
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kernels/adamw_step.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fast_math.h"

namespace upcycle {

namespace {

// Below this many parameters a parallel region costs more than it saves.
constexpr std::size_t kParallelMin = 1 << 14;
// Threads get slices of whole cache lines.
constexpr std::size_t kGrain = 16;

void adamw_range(float* __restrict params, const float* __restrict grads, float* __restrict m,
                 float* __restrict v, std::size_t begin, std::size_t end, const AdamWStep& s) {
    std::size_t i = begin;
#if defined(__AVX512F__)
    constexpr std::size_t kLanes = 16;
    // all lanes (the unmasked _mm512_sqrt_ps trips GCC 12's -Wmaybe-uninitialized)
    constexpr __mmask16 kAll = 0xFFFF;
    const __m512 lr = _mm512_set1_ps(s.lr), b1 = _mm512_set1_ps(s.beta1),
                 b2 = _mm512_set1_ps(s.beta2), omb1 = _mm512_set1_ps(s.one_minus_b1),
                 omb2 = _mm512_set1_ps(s.one_minus_b2), eps = _mm512_set1_ps(s.eps),
                 wd = _mm512_set1_ps(s.weight_decay), gs = _mm512_set1_ps(s.grad_scale),
                 ibc1 = _mm512_set1_ps(s.inv_bc1), ibc2 = _mm512_set1_ps(s.inv_bc2);
    for (; i + kLanes <= end; i += kLanes) {
        const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(grads + i), gs);
        const __m512 mi = _mm512_fmadd_ps(b1, _mm512_loadu_ps(m + i), _mm512_mul_ps(omb1, g));
        const __m512 vi = _mm512_fmadd_ps(b2, _mm512_loadu_ps(v + i),
                                          _mm512_mul_ps(_mm512_mul_ps(omb2, g), g));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        const __m512 m_hat = _mm512_mul_ps(mi, ibc1);
        const __m512 v_hat = _mm512_mul_ps(vi, ibc2);
        const __m512 p = _mm512_loadu_ps(params + i);
        const __m512 update = _mm512_fmadd_ps(
            wd, p, _mm512_div_ps(m_hat, _mm512_add_ps(_mm512_maskz_sqrt_ps(kAll, v_hat), eps)));
        _mm512_storeu_ps(params + i, _mm512_fnmadd_ps(lr, update, p));
    }
#endif
    for (; i < end; ++i) {
        const float g = grads[i] * s.grad_scale;
        const float mi = cpu::fmadd(s.beta1, m[i], s.one_minus_b1 * g);
        const float vi = cpu::fmadd(s.beta2, v[i], s.one_minus_b2 * g * g);
        m[i] = mi;
        v[i] = vi;
        const float m_hat = mi * s.inv_bc1;
        const float v_hat = vi * s.inv_bc2;
        const float update =
            cpu::fmadd(s.weight_decay, params[i], m_hat / (std::sqrt(v_hat) + s.eps));
        params[i] = cpu::fmadd(-s.lr, update, params[i]);
    }
}

}  // namespace

void CpuBackend::adamw_update(float* params, const float* grads, float* m, float* v,
                              std::size_t n, float lr, float beta1, float beta2, float eps,
                              float weight_decay, float grad_scale, int64_t step) {
    const AdamWStep s = make_adamw_step(lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    const std::size_t grains = (n + kGrain - 1) / kGrain;
#pragma omp parallel if (n >= kParallelMin)
    {
        const std::size_t nthreads = static_cast<std::size_t>(omp_get_num_threads());
        const std::size_t tid = static_cast<std::size_t>(omp_get_thread_num());
        const std::size_t begin = grains * tid / nthreads * kGrain;
        const std::size_t end = std::min(n, grains * (tid + 1) / nthreads * kGrain);
        if (begin < end) adamw_range(params, grads, m, v, begin, end, s);
    }
}

}  // namespace upcycle
