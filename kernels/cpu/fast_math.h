#pragma once
// Small math helpers for the CPU kernels that the compiler vectorises.
#include <bit>
#include <cmath>
#include <cstdint>

namespace upcycle::cpu {

// a·b + c, fused where the CPU has FMA (the build uses ISO C++ mode, in which GCC does not
// contract a·b + c on its own), plain otherwise (std::fma without hardware is a slow call).
inline float fmadd(float a, float b, float c) {
#if defined(__FMA__)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

// A branch-free single-precision exp() (std::exp in a loop is a scalar libm call unless
// -ffast-math). Used by softmax, attention and GELU. Accuracy: within about 2 ulp of expf
// over the whole float range (checked against double exp in
// tests/kernels/cpu/test_cpu_ops.cpp); exact 0 below the normal range, +inf above.
inline float fast_exp(float x) {
    constexpr float kLog2e = 1.44269504088896341f;
    // ln 2 split in two so that n·ln2 is subtracted exactly (Cody–Waite).
    constexpr float kLn2Hi = 0.693359375f;
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr float kMaxArg = 88.7228391f;         // expf overflows above
    constexpr float kMinArg = -87.3365447505531f;   // smallest normal result below
    // Adding 1.5·2^23 rounds to the nearest integer in the low mantissa bits.
    constexpr float kRoundMagic = 12582912.0f;

    const float xc = x < kMinArg ? kMinArg : (x > kMaxArg ? kMaxArg : x);
    const float t = fmadd(xc, kLog2e, kRoundMagic);
    const float n = t - kRoundMagic;
    const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRoundMagic);
    float r = fmadd(-n, kLn2Hi, xc);
    r = fmadd(-n, kLn2Lo, r);
    // exp(r) on [-ln2/2, ln2/2]: degree-6 minimax polynomial (Cephes expf coefficients).
    float p = 1.9875691500e-4f;
    p = fmadd(p, r, 1.3981999507e-3f);
    p = fmadd(p, r, 8.3334519073e-3f);
    p = fmadd(p, r, 4.1665795894e-2f);
    p = fmadd(p, r, 1.6666665459e-1f);
    p = fmadd(p, r, 5.0000001201e-1f);
    p = fmadd(p, r * r, r) + 1.0f;
    // Scale by 2^n in two halves so that n = 128 (x near the top of the range) still works.
    const int32_t half = ni >> 1;
    const float s1 = std::bit_cast<float>((half + 127) << 23);
    const float s2 = std::bit_cast<float>((ni - half + 127) << 23);
    float result = p * s1 * s2;
    result = x < kMinArg ? 0.0f : result;
    result = x > kMaxArg ? __builtin_inff() : result;
    return result;
}

// A branch-free single-precision natural log, vectorisable like fast_exp, accurate for
// positive normal x (what the softmax sums are): x = 2^e·m with m in [√½, √2); log(m) by the
// Cephes logf polynomial in f = m - 1. Accuracy: within about 2 ulp of logf (tested). The
// special cases follow logf so that a diverged model's loss reads NaN, never a finite number
// made from the bits of a NaN: log(NaN) = NaN, log(x < 0) = NaN, log(0) = -inf,
// log(+inf) = +inf. (Subnormal x is outside the contract.)
inline float fast_log(float x) {
    constexpr float kSqrtHalf = 0.707106781186547524f;
    constexpr float kLn2Hi = 0.693359375f;
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr int32_t kMantissaMask = 0x007fffff;
    constexpr int32_t kHalfExponent = 0x3f000000;  // exponent bits of 0.5
    const int32_t bits = std::bit_cast<int32_t>(x);
    // m in [0.5, 1), x = m · 2^e
    float e = static_cast<float>((bits >> 23) - 126);
    float m = std::bit_cast<float>((bits & kMantissaMask) | kHalfExponent);
    // move m into [√½, √2)
    const bool small = m < kSqrtHalf;
    e = small ? e - 1.0f : e;
    const float f = (small ? m + m : m) - 1.0f;
    const float z = f * f;
    float p = 7.0376836292e-2f;
    p = fmadd(p, f, -1.1514610310e-1f);
    p = fmadd(p, f, 1.1676998740e-1f);
    p = fmadd(p, f, -1.2420140846e-1f);
    p = fmadd(p, f, 1.4249322787e-1f);
    p = fmadd(p, f, -1.6668057665e-1f);
    p = fmadd(p, f, 2.0000714765e-1f);
    p = fmadd(p, f, -2.4999993993e-1f);
    p = fmadd(p, f, 3.3333331174e-1f);
    float y = p * f * z;
    y = fmadd(e, kLn2Lo, y);
    y = fmadd(-0.5f, z, y);
    float result = fmadd(e, kLn2Hi, f + y);
    result = x == __builtin_inff() ? x : result;
    result = x == 0.0f ? -__builtin_inff() : result;
    result = (x < 0.0f || x != x) ? __builtin_nanf("") : result;
    return result;
}

}  // namespace upcycle::cpu
