#pragma once
// GPT: byte-level tokens, learned positions, pre-LayerNorm blocks, causal multi-head
// attention, MLP 4·C with tanh-GELU, final LayerNorm, output head tied to the token
// embedding. Forward and hand-written backward on any Backend. With model.moe.experts > 0
// the MLP of the blocks model.moe.layers selects is an MoE layer (core/moe/moe_layer.h);
// the training objective is then mean cross-entropy + the MoE auxiliary losses.
//
// Parameters live in one flat buffer (so the optimizer and the gradient norm are single
// calls) in the order of parameter_layout(); names and shapes are the checkpoint's
// (PyTorch nn.Linear layout, [out, in]).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/config.h"
#include "core/moe/moe_layer.h"
#include "core/tensor.h"

namespace upcycle {

struct ParamInfo {
    std::string name;             // e.g. "blocks.0.attn.qkv.weight"
    std::vector<int64_t> shape;   // e.g. [3C, C]
    std::size_t offset = 0;       // into the flat buffer, in floats
    std::size_t numel = 0;
    bool is_matrix = false;       // 2-D: gets weight decay and normal init
};

// Names, shapes and offsets of every parameter of this configuration, in buffer order.
std::vector<ParamInfo> gpt_parameter_layout(const ModelConfig& config);

// Loss statistics of one forward pass.
struct ForwardStats {
    double loss_sum = 0;    // Σ of per-token cross-entropy (nats)
    int64_t tokens = 0;     // predictions counted (targets ≥ 0)
    int64_t correct = 0;    // argmax == target (only when requested)
    double aux_loss = 0;    // Σ over MoE layers of the coefficient-weighted aux + z losses
    double mean_loss() const { return tokens ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

enum class Pass {
    Train,     // keeps activations and writes dlogits for backward()
    Evaluate,  // loss and next-token accuracy, no gradient
};

class Gpt {
public:
    // Allocates parameters, gradients and activations for batches of up to max_batch
    // sequences of config.context tokens.
    Gpt(Backend& backend, const ModelConfig& config, int max_batch);

    const ModelConfig& config() const { return config_; }
    Backend& backend() const { return *backend_; }
    int max_batch() const { return max_batch_; }
    const std::vector<ParamInfo>& layout() const { return layout_; }
    const ParamInfo& param_info(const std::string& name) const;
    std::size_t num_parameters() const { return num_parameters_; }
    Tensor& parameters() { return parameters_; }
    Tensor& gradients() { return gradients_; }

    // Normal(0, 0.02) for matrices, with the residual output projections (attn.proj, mlp.proj)
    // scaled by 1/sqrt(2·layers); zero biases; LayerNorm weight 1, bias 0. Deterministic.
    void init_weights(uint64_t seed);

    // inputs, targets: host arrays of B·T token ids (T = context), B ≤ max_batch.
    // A negative target is not predicted. Train pass: mean-loss gradient prepared.
    ForwardStats forward(std::span<const int32_t> inputs, std::span<const int32_t> targets,
                         int B, Pass pass);
    // Zeroes and fills gradients() with d(mean loss)/d(parameters) of the last Train forward.
    void backward();

    // Logits of the last forward, [B, T, V], on the host (for tests and tools).
    std::vector<float> logits_host() const;

    // Blocks whose MLP is an MoE layer, and their routing statistics from the last forward
    // (same order).
    const std::vector<int>& moe_layers() const { return moe_layer_indices_; }
    std::vector<RoutingStats> routing_stats() const;
    // The MoE layer of block l (null for a dense block), for tests and tools.
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
    MoeTensors moe_tensors(int layer, Tensor& flat);
    const float* p(const std::string& name) const;
    float* g(const std::string& name);

    Backend* backend_;
    ModelConfig config_;
    int max_batch_;
    std::vector<ParamInfo> layout_;
    std::unordered_map<std::string, std::size_t> index_;  // name → layout_ position
    std::size_t num_parameters_ = 0;
    Tensor parameters_, gradients_;

    // activations for the last forward
    int batch_ = 0;              // B of the last forward
    int64_t predicted_ = 0;      // targets ≥ 0 in the last forward
    bool have_train_forward_ = false;
    Tensor inputs_, targets_;    // [B,T] int32
    std::vector<Tensor> residuals_;  // L+1 × [N,C]: input of each block, then the final stream
    std::vector<LayerActivations> layers_;
    std::vector<int> moe_layer_indices_;
    std::vector<std::unique_ptr<MoeLayer>> moe_;  // per block; null where the MLP is dense
    Tensor lnf, lnf_mean, lnf_rstd;  // [N,C], [N], [N]
    Tensor logits_;                  // [N,V]; holds dlogits after a Train forward
    Tensor losses_;                  // [N]
    Tensor argmax_;                  // [N] int32
    Tensor scratch_;                 // [N,C] branch outputs before the residual add
    // backward scratch
    Tensor dresidual_, dln_, datty_;  // [N,C]
    Tensor dqkv_;                     // [N,3C]
    Tensor dfch_gelu_, dfch_;         // [N,4C]
};

}  // namespace upcycle
