#pragma once
// Warm start (dense upcycling by depth tiling): a dense model (GPT or ViT) of L blocks becomes
// a dense model of depth_multiplier·L blocks whose blocks are copies of the original ones:
//   stack      — 0, 1, …, L-1, 0, 1, …, L-1, …  (the whole stack repeated)
//   interleave — 0, 0, 1, 1, …                  (each block repeated depth_multiplier times)
// Everything outside the blocks (embeddings, final LayerNorm, a ViT's patch embedding, class
// token and head) is copied; the training state carries over (the
// continuation keeps the dense run's LR schedule). With optimizer_state copy the AdamW moments
// are tiled the same way and the optimizer step carries over; reset writes none.
#include <string>
#include <vector>

#include "core/checkpoint.h"

namespace upcycle {

// The source block of each block of the deeper model.
std::vector<int> warmstart_source_blocks(int layers, int depth_multiplier, const std::string& tiling);

// Pure. Throws UserError when the checkpoint is not dense (file = its path) or an option is
// bad (file "", key depth_multiplier / tiling / optimizer_state).
Checkpoint warmstart_checkpoint(const Checkpoint& dense, int depth_multiplier,
                                const std::string& tiling, const std::string& optimizer_state);

}  // namespace upcycle
