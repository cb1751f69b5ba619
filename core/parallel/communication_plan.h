#pragma once
// Scaling on paper: the bytes one training step moves per rank in a data- and expert-parallel
// job, and the time they take at a link bandwidth, set against the step's compute time — the
// basis for choosing the ranks N and the expert-parallel size M before renting a cluster.
// Pure arithmetic over the model config (no timing); `upcycle bench --plan` prints it.
//
// What is counted, as this project's parallel training moves it:
//   data parallel: every rank's gradient buffer (all P parameters, float32, experts included:
//     an expert-parallel rank keeps the whole buffer, with zeros for the experts it does not
//     own) is averaged by a ring all-reduce, which sends and receives 2·(N−1)/N·P·4 bytes per
//     rank. ZeRO-1 moves the same: a reduce-scatter and an all-gather of (N−1)/N·P·4 each.
//   expert parallel: per MoE layer and micro-batch, four all-to-alls (dispatch and combine,
//     forward and backward) of the rank's routed rows: n·k rows of C float32 for top-k (n·cf
//     for expert choice) per rank, of which (M−1)/M leave the rank when routing is balanced.
// For comparison, what the all-reduce would move with the experts sharded (each rank holding
// only its E/M experts, reduced among the N/M ranks that hold the same ones), which is not
// built: 2·(N−1)/N·P_shared·4 + 2·(N/M−1)/(N/M)·(P_experts/M)·4.
// The time of each is bytes / bandwidth (links are taken as full duplex: what a rank sends
// and receives overlap), with no overlap between communication and compute assumed.
#include <cstdint>

#include "core/config.h"

namespace upcycle {

struct CommunicationPlanInput {
    ModelConfig model;
    int global_batch = 8;     // examples per optimizer step, over all ranks
    int micro_batch = 0;      // examples per pass on a rank; 0: the rank's whole share
    int ranks = 1;            // N
    int expert_parallel = 1;  // M: ranks that share one set of experts (divides N and E)
    double link_bytes_per_second = 50e9;     // per rank, each direction
    double compute_flops_per_second = 4e14;  // achieved per rank
};

struct CommunicationPlan {
    int64_t parameters = 0;
    int examples_per_rank = 0;
    int passes_per_step = 0;  // micro-batches per rank per step
    int moe_layers = 0;
    double compute_seconds = 0;           // the rank's training FLOPs / compute rate
    int64_t expert_parameters = 0;        // of all experts together
    double all_reduce_bytes = 0;          // data parallel, sent per rank per step
    double sharded_all_reduce_bytes = 0;  // the same were the experts sharded (not built)
    double all_to_all_bytes = 0;          // expert parallel, sent per rank per step
    double all_reduce_seconds = 0;
    double all_to_all_seconds = 0;
    // (communication + compute) / compute: how much longer a step is than its compute alone.
    double step_over_compute() const {
        return (compute_seconds + all_reduce_seconds + all_to_all_seconds) / compute_seconds;
    }
};

// UserError (key "--ranks", "--ep", "--batch", "--micro-batch") when the sizes do not divide.
CommunicationPlan plan_communication(const CommunicationPlanInput& input);

}  // namespace upcycle
