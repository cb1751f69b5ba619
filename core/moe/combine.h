#pragma once
// Combine: each token's output is the weighted sum of its experts' rows (a deterministic
// scatter-add walked per token); the backward gives the rows' gradients and the combine
// weights' gradients, which flow on into the router.
#include "core/backend.h"

namespace upcycle {

// Device-side dispatch index (uploaded from a DispatchPlan).
struct DeviceDispatch {
    const int32_t* row_token = nullptr;      // [R]
    const int32_t* token_offsets = nullptr;  // [N+1]
    const int32_t* token_rows = nullptr;     // [R]
    const float* weights = nullptr;          // [R] token-major
    int N = 0;
    int R = 0;
};

// out[N,C] = Σ weights · expert_out rows (overwrites)
void combine_forward(Backend& be, const DeviceDispatch& d, const float* expert_out, float* out,
                     int C);
// dexpert_out[R,C] and dweights[R] are zeroed here, then filled.
void combine_backward(Backend& be, const DeviceDispatch& d, const float* dout,
                      const float* expert_out, float* dexpert_out, float* dweights, int C);

}  // namespace upcycle
