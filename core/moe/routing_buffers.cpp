#include "core/moe/routing_buffers.h"

#include "core/errors.h"

namespace upcycle {

RoutingBuffers::RoutingBuffers(Backend& backend, int max_tokens, int experts, int max_slots,
                               int64_t max_rows)
    : max_tokens_(max_tokens), experts_(experts), max_slots_(max_slots), max_rows_(max_rows) {
    const int64_t N = max_tokens, E = experts, S = max_slots;
    probabilities_ = Tensor(backend, {N, E});
    logsumexp_ = Tensor(backend, {N});
    slot_expert_ = Tensor(backend, {N, S}, DType::I32);
    slot_row_ = Tensor(backend, {N, S}, DType::I32);
    slot_weight_ = Tensor(backend, {N, S});
    row_token_ = Tensor(backend, {max_rows}, DType::I32);
    expert_count_ = Tensor(backend, {E}, DType::I32);
    expert_offset_ = Tensor(backend, {E + 1}, DType::I32);
    load_fraction_ = Tensor(backend, {E}, DType::F64);
    statistics_ = Tensor(backend, {kRoutingSums + E}, DType::F64);
}

MoeRouting RoutingBuffers::bind(MoeRouting r) {
    UPCYCLE_ASSERT(r.N <= max_tokens_ && r.E == experts_ && r.slots() <= max_slots_ &&
                       r.rows() <= max_rows_,
                   "routing needs more room than its buffers were sized for");
    r.probabilities = probabilities_.f32();
    r.logsumexp = logsumexp_.f32();
    r.slot_expert = slot_expert_.i32();
    r.slot_row = slot_row_.i32();
    r.slot_weight = slot_weight_.f32();
    r.row_token = row_token_.i32();
    r.expert_count = expert_count_.i32();
    r.expert_offset = expert_offset_.i32();
    r.load_fraction = load_fraction_.f64();
    r.statistics = statistics_.f64();
    return r;
}

}  // namespace upcycle
