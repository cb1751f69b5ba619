// tanh-approximated GELU, as PyTorch's gelu(approximate="tanh"):
//   gelu(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
// Written with the identity 0.5·(1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)), which has
// no cancellation for either sign of u and vectorises with fast_exp (std::tanh is a scalar
// libm call). Derivative: with s = sigmoid(2u), 1 - tanh²(u) = 4·s·(1 - s), so
//   gelu'(x) = s + 2·x·s·(1 - s)·u',  u' = √(2/π)·(1 + 3·0.044715·x²).
#include <cstddef>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/fast_math.h"

namespace upcycle {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr std::size_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::gelu_forward(float* out, const float* inp, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) {
        const float x = inp[i];
        const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
        out[i] = x / (1.0f + cpu::fast_exp(-2.0f * u));
    }
}

void CpuBackend::gelu_backward(float* dinp, const float* inp, const float* dout,
                               std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) {
        const float x = inp[i];
        const float x2 = x * x;
        const float u = kSqrt2OverPi * (x + kCubic * x2 * x);
        const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x2);
        const float s = 1.0f / (1.0f + cpu::fast_exp(-2.0f * u));
        const float grad = s + 2.0f * x * s * (1.0f - s) * du;
        dinp[i] += grad * dout[i];
    }
}

}  // namespace upcycle
