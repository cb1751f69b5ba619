#pragma once
// bfloat16 emulation for the CPU backend's bf16 precision (core/backend.h, Precision::BF16):
// a GEMM operand is rounded to bfloat16 — the top 16 bits of an fp32, round to nearest, ties
// to even, as __float2bfloat16_rn does on the GPU — and kept in an fp32 container, so the
// products and their accumulation stay fp32, as on tensor cores.
#include <bit>
#include <cstddef>
#include <cstdint>

namespace upcycle::cpu {

// x rounded to the nearest bfloat16 (ties to even). Infinities pass through; a NaN stays a
// NaN (quiet), never rounding into an infinity.
inline float round_to_bf16(float x) {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    constexpr std::uint32_t kExponent = 0x7f800000u, kMantissa = 0x007fffffu;
    constexpr std::uint32_t kQuietBit = 0x00400000u, kHigh = 0xffff0000u;
    if ((bits & kExponent) == kExponent && (bits & kMantissa) != 0) {
        return std::bit_cast<float>((bits | kQuietBit) & kHigh);
    }
    // add just under half an ulp of bf16, plus one when the kept part is odd (ties to even)
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return std::bit_cast<float>(bits & kHigh);
}

// out[i] = round_to_bf16(in[i]) for i < n (parallel for large n; each element alone, so the
// result does not depend on the thread count).
void round_to_bf16(float* out, const float* in, std::size_t n);

}  // namespace upcycle::cpu
