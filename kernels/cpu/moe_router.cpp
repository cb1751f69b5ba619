// Mixture-of-Experts routing on the CPU: the reference rule of core/moe/router.cpp, laid out
// in the backend's fixed-shape form (the CPU's device memory is host memory).
#include "core/moe/router.h"
#include "kernels/cpu/cpu_backend.h"

namespace upcycle {

void CpuBackend::moe_route(const MoeRouting& r, const float* logits) {
    write_routing(route(r, logits), r);
}

void CpuBackend::moe_route_backward(float* dlogits, const float* dslot_weight,
                                    const MoeRouting& r) {
    router_logits_gradient(r, dslot_weight, dlogits);
}

}  // namespace upcycle
