#pragma once
// An MoE layer in place of a block's MLP: route → dispatch → experts → combine, forward and
// backward, with the router's gradient coming through the combine weights and the auxiliary
// losses (load balancing, z-loss). Tokens move to the experts' rows and back through a
// TokenDispatcher (core/moe/token_dispatcher.h), the seam for expert parallelism.
//
// Everything runs on the backend in fixed shapes (MoeRouting, core/backend.h): with a
// capacity limit a forward and backward of a local layer read nothing back to the host (an
// expert-parallel one reads its expert counts, to exchange them with the other ranks). The
// routing statistics stay on the device until stats() or auxiliary_loss() asks for them.
#include <array>
#include <cstdint>
#include <memory>
#include <optional>

#include "core/config.h"
#include "core/moe/experts.h"
#include "core/moe/router.h"
#include "core/moe/routing_buffers.h"
#include "core/moe/token_dispatcher.h"
#include "core/tensor.h"

namespace upcycle {

// The layer's phases, for timing (benchmarks and profiles).
enum class MoePhase : int {
    RouterForward,    // router GEMM and routing
    DispatchForward,  // gather the tokens into expert rows
    ExpertsForward,   // the experts' GEMMs and GELU
    CombineForward,   // the weighted sum back into tokens
    CombineBackward,
    ExpertsBackward,
    DispatchBackward,
    RouterBackward,  // routing gradient and the router GEMM's backward
    Count,
};
const char* moe_phase_name(MoePhase phase);
// Seconds spent in each phase, summed over the passes timed.
using MoePhaseSeconds = std::array<double, static_cast<std::size_t>(MoePhase::Count)>;

struct MoeTensors {
    float* router = nullptr;  // [E,C]
    ExpertTensors experts;
};

// One MoE layer's parameters in a flat buffer of their own (benchmarks and tests), in the
// checkpoint's order: the router [E,C], then each expert's fc.weight, fc.bias, proj.weight,
// proj.bias.
std::size_t moe_layer_parameters(int E, int C);
MoeTensors moe_tensors_in(float* flat, int E, int C);

class MoeLayer {
public:
    // Buffers for up to max_tokens tokens per forward. pad_rows: lay a capacity-limited
    // layer's expert rows out in padded blocks (routing_rule); the backend's preference is
    // Backend::pads_expert_rows(). dispatcher: how tokens reach the experts' rows and come
    // back, and which experts this process computes (an expert-parallel one: this rank's,
    // core/moe/expert_parallel_dispatcher.h); null: a LocalTokenDispatcher on backend.
    MoeLayer(Backend& backend, const ModelConfig& model, int max_tokens, bool pad_rows,
             std::unique_ptr<TokenDispatcher> dispatcher = nullptr);

    // x [N,C] → out [N,C] (overwrites). capacity_factor: the train or eval one.
    void forward(float* out, const float* x, int N, const MoeTensors& w, double capacity_factor);
    // dx [N,C] += …, parameter gradients += … (router and experts), for the last forward.
    void backward(float* dx, const float* dout, const float* x, const MoeTensors& w,
                  const MoeTensors& grad);

    // Of the last forward (downloads the routing sums the first time it is asked).
    const RoutingStats& stats() const;
    // aux_loss_coef·aux + z_loss_coef·z of the last forward (added to the training loss).
    double auxiliary_loss() const;
    // With times set, each forward and backward synchronises the backend at every phase
    // boundary and adds each phase's seconds to *times (costs the overlap; for benchmarks).
    // nullptr: no timing (the default).
    void time_phases(MoePhaseSeconds* times) { phase_seconds_ = times; }
    // The last forward's decision, read back in the readable form (tests, inspection).
    RoutingDecision decision() const { return read_routing(*backend_, routing_); }

private:
    Backend* backend_;
    std::unique_ptr<TokenDispatcher> dispatcher_;
    MoeConfig moe_;
    int C_;
    int max_tokens_;
    bool pad_rows_;
    RoutingBuffers buffers_;
    MoeRouting routing_;  // the last forward's rule, bound to buffers_
    ExpertShard shard_;   // the last forward's experts on this process and their rows
    mutable std::optional<RoutingStats> stats_;
    MoePhaseSeconds* phase_seconds_ = nullptr;
    Tensor logits_, dlogits_;  // [N,E]
    Tensor dslot_weight_;      // [N,S]
    // The experts' rows (ExpertShard::groups.rows; an expert-parallel layer receives more
    // or fewer than it routes, so these grow to the most a forward needed).
    Tensor xin_, yout_, dxin_, dyout_;                      // [rows,C]
    Tensor hidden_, hidden_gelu_, dhidden_, dhidden_gelu_;  // [rows,4C]
    int64_t expert_rows_reserved_ = 0;
    void reserve_expert_rows(int64_t rows);
};

}  // namespace upcycle
