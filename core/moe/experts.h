#pragma once
// The experts: E independent MLPs (fc C→4C, tanh-GELU, proj 4C→C), each applied to its
// contiguous block of dispatched rows with the backend's GEMMs.
#include <vector>

#include "core/backend.h"

namespace upcycle {

// Pointers into the model's flat parameter (or gradient) buffer, one entry per expert.
struct ExpertTensors {
    std::vector<float*> fc_weight, fc_bias, proj_weight, proj_bias;  // [4C,C] [4C] [C,4C] [C]
};

// Activations of the expert MLPs for R rows: hidden [R,4C] before and after the GELU.
struct ExpertActivations {
    float* hidden = nullptr;
    float* hidden_gelu = nullptr;
};

// out[R,C] for rows grouped by expert_offsets [E+1]; x [R,C] are the dispatched rows.
void experts_forward(Backend& be, const ExpertTensors& w, const std::vector<int32_t>& expert_offsets,
                     const float* x, ExpertActivations act, float* out, int C);

// dx [R,C] += …; expert gradients += …; dhidden_gelu and dhidden are [R,4C] scratch that this
// zeroes itself.
void experts_backward(Backend& be, const ExpertTensors& w, ExpertTensors& grad,
                      const std::vector<int32_t>& expert_offsets, const float* x,
                      ExpertActivations act, const float* dout, float* dx, float* dhidden_gelu,
                      float* dhidden, int C);

}  // namespace upcycle
