#include "core/moe/combine.h"

namespace upcycle {

void combine_forward(Backend& be, const DeviceDispatch& d, const float* expert_out, float* out,
                     int C) {
    be.combine_rows(out, expert_out, d.weights, d.token_offsets, d.token_rows, d.N, C);
}

void combine_backward(Backend& be, const DeviceDispatch& d, const float* dout,
                      const float* expert_out, float* dexpert_out, float* dweights, int C) {
    be.zero(dexpert_out, static_cast<std::size_t>(d.R) * C * sizeof(float));
    be.zero(dweights, static_cast<std::size_t>(d.R) * sizeof(float));
    be.combine_rows_backward(dexpert_out, dweights, dout, expert_out, d.weights, d.token_offsets,
                             d.token_rows, d.N, C);
}

}  // namespace upcycle
