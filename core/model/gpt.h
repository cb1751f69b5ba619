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
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model/transformer_model.h"
#include "core/tensor.h"

namespace upcycle {

// Names, shapes and offsets of every parameter of this configuration, in buffer order.
std::vector<ParamInfo> gpt_parameter_layout(const ModelConfig& config);

class Gpt final : public TransformerModel {
public:
    // Allocates parameters, gradients and activations for batches of up to max_batch
    // sequences of config.context tokens. expert_parallel: the ranks the MoE layers' experts
    // are spread over (null: all experts here; see make_model).
    Gpt(Backend& backend, const ModelConfig& config, int max_batch,
        Communicator* expert_parallel = nullptr);

    // Normal(0, 0.02) for matrices, with the residual output projections (attn.proj, mlp.proj)
    // scaled by 1/sqrt(2·layers); zero biases; LayerNorm weight 1, bias 0. Deterministic.
    void init_weights(uint64_t seed) override;

    // inputs, targets: host arrays of B·T token ids (T = context), B ≤ max_batch.
    // A negative target is not predicted. Train pass: mean-loss gradient prepared.
    ForwardStats forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B,
                         Pass pass);
    // Zeroes and fills gradients() with d(mean loss)/d(parameters) of the last Train forward.
    void backward(Gradients mode = Gradients::Overwrite) override;

    // Logits of the last forward, [B, T, V], on the host (for tests and tools).
    std::vector<float> logits_host() const;

private:
    // activations for the last forward
    int batch_ = 0;  // B of the last forward
    bool have_train_forward_ = false;
    Tensor inputs_, targets_;        // [B,T] int32
    Tensor lnf, lnf_mean, lnf_rstd;  // [N,C], [N], [N]
    Tensor logits_;                  // [N,V]; holds dlogits after a Train forward
    Tensor losses_;                  // [N]
    Tensor argmax_;                  // [N] int32
    // backward scratch
    Tensor dresidual_, dln_;  // [N,C]
};

}  // namespace upcycle
