#pragma once
// Sparse upcycling: a dense checkpoint (GPT or ViT) becomes a Mixture-of-Experts checkpoint. In each
// chosen block the MLP (mlp.fc, mlp.proj) is replaced by a router and E experts made from it;
// every other tensor is copied bit for bit and the training state (step, tokens, FLOPs,
// seconds, data stream) carries over, so the continuation keeps the dense run's LR schedule.
//
// Expert init variants:
//   copy  — every expert is the dense MLP, bit for bit (the paper);
//   noise — w + σ·std(w)·N(0,1) per tensor, biases included (std over that dense tensor; a
//           zero-std tensor stays unchanged); each expert draws its own noise;
//   drop  — Drop-Upcycling: each expert independently re-initialises round(r·4C) randomly
//           chosen hidden neurons (the same set in its fc.weight rows, fc.bias entries and
//           proj.weight columns) from a normal with the dense tensor's mean and std;
//           proj.bias is untouched.
// The router is N(0, 0.02) (or zeros), drawn from Rng(seed) in layer order; noise and drop
// draw from a separate stream of the same seed, so the router does not depend on them.
#include <cstdint>
#include <string>

#include "core/checkpoint.h"
#include "core/config.h"

namespace upcycle {

inline constexpr int kDefaultUpcycleExperts = 8;  // the paper used 32; small runs here use 8
inline constexpr double kRouterInitStd = 0.02;

struct UpcycleOptions {
    MoeConfig moe{.experts = kDefaultUpcycleExperts};  // copied into the result's model.moe
    std::string router_init = "normal";      // normal (std kRouterInitStd) | zeros
    std::string expert_init = "copy";        // copy | noise | drop
    double noise_std = 0.01;                 // σ for noise, relative to each tensor's std
    double drop_ratio = 0.5;                 // r for drop: fraction of the 4C hidden neurons
    std::string optimizer_state = "reset";   // reset (no moments) | copy (experts inherit the
                                             // MLP's moments, the router's start at zero)
    uint64_t seed = 0;
};

// Pure: reads nothing but its arguments. Throws UserError when the checkpoint is not dense
// (file = its path, key model.moe.experts) or an option is bad (file "", key = the config key
// model.moe.* as validate() names it, or router_init / expert_init / noise_std / drop_ratio /
// optimizer_state). The result's tensors are in parameter_layout order, then the
// optimizer moments as save_checkpoint writes them; metadata "upcycle.surgery" records what
// was done (JSON).
Checkpoint upcycle_checkpoint(const Checkpoint& dense, const UpcycleOptions& options);

}  // namespace upcycle
