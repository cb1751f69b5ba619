#pragma once
// An MoE layer in place of a block's MLP: route → dispatch → experts → combine, forward and
// backward, with the router's gradient coming through the combine weights and the auxiliary
// losses (load balancing, z-loss). Routing statistics of the last forward are kept.
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/moe/combine.h"
#include "core/moe/dispatch.h"
#include "core/moe/experts.h"
#include "core/moe/router.h"
#include "core/tensor.h"

namespace upcycle {

struct MoeTensors {
    float* router = nullptr;  // [E,C]
    ExpertTensors experts;
};

class MoeLayer {
public:
    // Buffers for up to max_tokens tokens per forward.
    MoeLayer(Backend& backend, const ModelConfig& model, int max_tokens);

    // x [N,C] → out [N,C] (overwrites). capacity_factor: the train or eval one.
    void forward(float* out, const float* x, int N, const MoeTensors& w, double capacity_factor);
    // dx [N,C] += …, parameter gradients += … (router and experts), for the last forward.
    void backward(float* dx, const float* dout, const float* x, const MoeTensors& w,
                  MoeTensors& grad);

    const RoutingStats& stats() const { return decision_.stats; }
    const RoutingDecision& decision() const { return decision_; }
    // aux_loss_coef·aux + z_loss_coef·z of the last forward (added to the training loss).
    double auxiliary_loss() const;

private:
    Backend* backend_;
    MoeConfig moe_;
    int C_;
    int max_tokens_;
    int64_t max_rows_;
    int N_ = 0;
    RoutingDecision decision_;
    DispatchPlan plan_;
    Tensor logits_, dlogits_;                              // [N,E]
    Tensor row_token_, token_offsets_, token_rows_;        // int32 [R], [N+1], [R]
    Tensor weights_, dweights_;                            // [R]
    Tensor xin_, yout_, dxin_, dyout_;                     // [R,C]
    Tensor hidden_, hidden_gelu_, dhidden_, dhidden_gelu_; // [R,4C]
};

}  // namespace upcycle
