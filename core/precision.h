#pragma once
// GEMM operand precision: a mode of the backend, the value of train.precision and --precision.

namespace upcycle {

// The precision of the products (a mode of the backend, set once per run):
//   FP32: fp32 operands and products.
//   BF16: the linear layers' GEMMs (matmul_forward, matmul_backward) round both operands to
//         bfloat16 (round to nearest even) and accumulate and write fp32 — what tensor
//         cores do with bf16 inputs. A backend may also run attention's products on bf16
//         operands (the CUDA backend does, for head sizes that are multiples of 16; softmax
//         statistics stay fp32). Every other op, the stored activations, the master weights
//         and the optimizer stay fp32. The CPU backend emulates the GEMMs' rounding (the
//         specification) and keeps attention fp32.
enum class Precision { FP32, BF16 };

// "fp32" / "bf16" (the spelling of train.precision and --precision). Kept C++17 for the
// CUDA sources; C++20 code parses it with core/choice.h.
inline const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

}  // namespace upcycle
