#pragma once
// The stack of pre-LayerNorm transformer blocks that the GPT (causal attention) and the ViT
// (full attention) share: their parameters' names and shapes, their activations, and the
// forward and backward passes over the residual stream. Each block is
//   x += proj(attention(qkv(ln1(x))));   x += mlp(ln2(x))
// where mlp is the dense MLP (fc 4C, tanh-GELU, proj) or, in the blocks model.moe selects,
// an MoE layer (core/moe/moe_layer.h).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/comm.h"
#include "core/config.h"
#include "core/model/parameters.h"
#include "core/moe/moe_layer.h"
#include "core/tensor.h"

namespace upcycle {

enum class Pass {
    Train,     // keeps activations and writes dlogits for backward()
    Evaluate,  // loss and accuracy, no gradient
};

class TransformerBlocks {
public:
    // Activations for batches of up to max_batch sequences of T tokens. The blocks'
    // parameter offsets are looked up in `index` once, here, not in every step.
    // expert_parallel: the ranks the MoE layers' experts are spread over
    // (core/moe/expert_parallel_dispatcher.h; every forward is then a collective of them);
    // null: this process computes every expert.
    TransformerBlocks(Backend& backend, const ModelConfig& model, const ParameterIndex& index,
                      int max_batch, int T, bool causal, Communicator* expert_parallel = nullptr);

    // The residual stream: stream(0) is the blocks' input [N,C] (the caller writes it),
    // stream(L) their output after forward().
    float* stream(int l) { return residuals_[static_cast<std::size_t>(l)].f32(); }
    const float* stream(int l) const { return residuals_[static_cast<std::size_t>(l)].f32(); }

    void forward(Tensor& parameters, int B, Pass pass);
    // dstream [N,C]: dL/d(stream(L)) in, dL/d(stream(0)) out (in place); parameter
    // gradients are accumulated into `gradients` (same layout as `parameters`).
    void backward(Tensor& parameters, Tensor& gradients, float* dstream);

    const std::vector<int>& moe_layers() const { return moe_layer_indices_; }
    std::vector<RoutingStats> routing_stats() const;
    // Σ over MoE blocks of the coefficient-weighted aux + z losses of the last forward.
    double auxiliary_loss() const;
    const MoeLayer* moe_layer(int l) const { return moe_[static_cast<std::size_t>(l)].get(); }

private:
    struct LayerActivations {
        Tensor ln1, ln1_mean, ln1_rstd;  // [N,C], [N], [N]
        Tensor qkv;                      // [N,3C]
        Tensor atty;                     // [N,C] attention output before the projection
        Tensor lse;                      // [B,H,T]
        Tensor residual2;                // [N,C] after the attention branch
        Tensor ln2, ln2_mean, ln2_rstd;  // [N,C], [N], [N]
        Tensor fch, fch_gelu;            // [N,4C] (dense MLP blocks only)
    };
    // Offsets (in floats) of one block's parameters in the flat buffer.
    struct LayerOffsets {
        std::size_t ln1_weight, ln1_bias, qkv_weight, qkv_bias, attn_proj_weight, attn_proj_bias;
        std::size_t ln2_weight, ln2_bias;
        std::size_t fc_weight = 0, fc_bias = 0, mlp_proj_weight = 0, mlp_proj_bias = 0;  // dense
        std::size_t router = 0;                                                          // MoE
        std::size_t expert_fc_weight = 0, expert_fc_bias = 0, expert_proj_weight = 0,  // expert 0's
            expert_proj_bias = 0, expert_stride = 0;
    };
    MoeTensors moe_tensors(int layer, Tensor& flat) const;

    Backend* backend_;
    ModelConfig config_;
    int max_batch_, T_;
    bool causal_;
    int batch_ = 0;
    std::vector<Tensor> residuals_;  // L+1 × [N,C]
    std::vector<LayerActivations> layers_;
    std::vector<LayerOffsets> offsets_;
    std::vector<int> moe_layer_indices_;
    std::vector<std::unique_ptr<MoeLayer>> moe_;  // per block; null where the MLP is dense
    Tensor scratch_;                              // [N,C] branch outputs before the residual add
    Tensor dln_, datty_;                          // [N,C]
    Tensor dqkv_;                                 // [N,3C]
    Tensor dfch_gelu_, dfch_;                     // [N,4C]
};

}  // namespace upcycle
