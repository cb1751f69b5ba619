#pragma once
// The one switch from a continuation method to its surgery: the sweep executor and
// `upcycle surgery` both make a continuation's starting checkpoint here.
//   dense     — the parent itself (no surgery: dense continuation trains the same model);
//   upcycle   — core/surgery/upcycle.h;
//   scratch   — core/surgery/scratch.h;
//   warmstart — core/surgery/warmstart.h.
#include <cstdint>
#include <string>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/choice.h"
#include "core/config.h"
#include "core/surgery/upcycle.h"

namespace upcycle {

// The from-scratch baseline: the MoE architecture, randomly initialised from `seed`.
struct ScratchOptions {
    MoeConfig moe{.experts = kDefaultUpcycleExperts};
    uint64_t seed = 0;
};

// Warm start by depth tiling (core/surgery/warmstart.h).
struct WarmstartOptions {
    int depth_multiplier = 2;
    std::string tiling = "stack";           // stack | interleave
    std::string optimizer_state = "reset";  // reset | copy
};

// Each method reads its own member and ignores the others.
struct ContinuationOptions {
    UpcycleOptions upcycle;
    ScratchOptions scratch;
    WarmstartOptions warmstart;
};

// Whether the method starts from a checkpoint of its own (false for dense: it continues from
// the parent's file as it is).
bool makes_new_checkpoint(Method method);

// The checkpoint `method` starts from, made from the dense parent. `backend` runs scratch's
// init_weights (pass a CPU backend); the other surgeries are pure. Throws UserError as the
// surgery does (a parent that is not dense, a bad option); Method::Pretrain is a programmer
// error.
Checkpoint make_continuation(Method method, const ContinuationOptions& options,
                             const Checkpoint& parent, Backend& backend);

}  // namespace upcycle
