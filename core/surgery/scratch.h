#pragma once
// The from-scratch baseline: the MoE architecture that upcycling would make of a dense
// checkpoint, initialised exactly as the model's init_weights(seed) does (no sunk cost reused).
// The training counters (step, tokens, FLOPs, seconds) restart at zero, so the LR schedule
// warms up again and budgets count from nothing; there is no optimizer state. The data
// stream's generator state is carried over from the dense checkpoint, so every continuation
// method (dense, upcycle, warmstart, scratch) reads the same batches from the same checkpoint.
#include <cstdint>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"

namespace upcycle {

// Pure apart from using `backend` to run the model's init_weights (pass a CPU backend). Throws
// UserError when the checkpoint is not dense (file = its path) or moe is invalid for it
// (file "", key model.moe.*, as validate() names it).
Checkpoint scratch_checkpoint(const Checkpoint& dense, const MoeConfig& moe, uint64_t seed,
                              Backend& backend);

}  // namespace upcycle
