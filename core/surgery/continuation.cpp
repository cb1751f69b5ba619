#include "core/surgery/continuation.h"

#include "core/errors.h"
#include "core/surgery/scratch.h"
#include "core/surgery/warmstart.h"

namespace upcycle {

bool makes_new_checkpoint(Method method) { return method != Method::Dense; }

Checkpoint make_continuation(Method method, const ContinuationOptions& options,
                             const Checkpoint& parent, Backend& backend) {
    switch (method) {
        case Method::Dense: return parent;
        case Method::Upcycle: return upcycle_checkpoint(parent, options.upcycle);
        case Method::Scratch:
            return scratch_checkpoint(parent, options.scratch.moe, options.scratch.seed, backend);
        case Method::Warmstart: {
            const WarmstartOptions& w = options.warmstart;
            return warmstart_checkpoint(parent, w.depth_multiplier, w.tiling, w.optimizer_state);
        }
        case Method::Pretrain: break;
    }
    UPCYCLE_ASSERT(false, "make_continuation: pretrain is not a continuation method");
    return parent;
}

}  // namespace upcycle
