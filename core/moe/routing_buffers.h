#pragma once
// The device buffers of a MoeRouting (core/backend.h), owned: sized once for the most tokens,
// slots and rows a layer will route, then bound to each forward's rule.
#include <cstdint>

#include "core/backend.h"
#include "core/tensor.h"

namespace upcycle {

class RoutingBuffers {
public:
    RoutingBuffers() = default;
    RoutingBuffers(Backend& backend, int max_tokens, int experts, int max_slots, int64_t max_rows);

    // rule with every buffer pointer set; asserts that it fits.
    MoeRouting bind(MoeRouting rule);

private:
    int max_tokens_ = 0, experts_ = 0, max_slots_ = 0;
    int64_t max_rows_ = 0;
    Tensor probabilities_;               // [N,E]
    Tensor logsumexp_;                   // [N]
    Tensor slot_expert_, slot_row_;      // int32 [N,S]
    Tensor slot_weight_;                 // [N,S]
    Tensor row_token_;                   // int32 [rows]
    Tensor expert_count_, expert_offset_;  // int32 [E], [E+1]
    Tensor load_fraction_, statistics_;    // float64 [E], [kRoutingSums + E]
};

}  // namespace upcycle
