#include "core/moe/token_dispatcher.h"

namespace upcycle {

void LocalTokenDispatcher::dispatch(float* rows, const float* x, const MoeRouting& r, int C) {
    backend_->gather_rows(rows, x, r.row_token, r.rows(), C);
}

void LocalTokenDispatcher::dispatch_backward(float* dx, const float* drows, const MoeRouting& r,
                                             int C) {
    backend_->gather_rows_backward(dx, drows, r.slot_row, r.N, r.slots(), C);
}

void LocalTokenDispatcher::combine(float* out, const float* rows, const MoeRouting& r, int C) {
    backend_->combine_rows(out, rows, r.slot_weight, r.slot_row, r.N, r.slots(), C);
}

void LocalTokenDispatcher::combine_backward(float* drows, float* dslot_weight, const float* dout,
                                            const float* rows, const MoeRouting& r, int C) {
    backend_->combine_rows_backward(drows, dslot_weight, dout, rows, r.slot_weight, r.slot_row, r.N,
                                    r.slots(), C);
}

}  // namespace upcycle
