#pragma once
// The experts: E independent MLPs (fc C→4C, tanh-GELU, proj 4C→C), each applied to the rows
// routing gave it (ExpertGroups), one strided GEMM per layer for all experts.
#include <cstddef>

#include "core/backend.h"

namespace upcycle {

// Pointers into the model's flat parameter (or gradient) buffer: expert 0's tensors, and the
// distance in floats from one expert's tensors to the next's (an expert's fc and proj lie
// together, so the four tensors share one stride).
struct ExpertTensors {
    float* fc_weight = nullptr;    // [4C,C]
    float* fc_bias = nullptr;      // [4C]
    float* proj_weight = nullptr;  // [C,4C]
    float* proj_bias = nullptr;    // [C]
    std::size_t stride = 0;

    // The same tensors from expert e on (the experts one rank of an expert-parallel layer
    // computes start at its first).
    ExpertTensors from_expert(int e) const {
        const std::size_t shift = static_cast<std::size_t>(e) * stride;
        return {fc_weight + shift, fc_bias + shift, proj_weight + shift, proj_bias + shift, stride};
    }
};

// Activations of the expert MLPs for all rows: hidden [rows,4C] before and after the GELU.
struct ExpertActivations {
    float* hidden = nullptr;
    float* hidden_gelu = nullptr;
};

// out[rows,C] from the dispatched rows x[rows,C].
void experts_forward(Backend& be, const ExpertTensors& w, const ExpertGroups& g, const float* x,
                     ExpertActivations act, float* out, int C);

// dx [rows,C] += …; expert gradients += …; dhidden_gelu and dhidden are [rows,4C] scratch that
// this zeroes itself. dout's padding rows must be zero.
void experts_backward(Backend& be, const ExpertTensors& w, const ExpertTensors& grad,
                      const ExpertGroups& g, const float* x, ExpertActivations act,
                      const float* dout, float* dx, float* dhidden_gelu, float* dhidden, int C);

}  // namespace upcycle
