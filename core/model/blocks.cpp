#include "core/model/blocks.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/moe/expert_parallel_dispatcher.h"
#include "core/rng.h"

namespace upcycle {

TransformerBlocks::TransformerBlocks(Backend& backend, const ModelConfig& model,
                                     const ParameterIndex& index, int max_batch, int T, bool causal,
                                     Communicator* expert_parallel)
    : backend_(&backend), config_(model), max_batch_(max_batch), T_(T), causal_(causal) {
    const int64_t B = max_batch, C = model.channels, H = model.heads, N = B * T;
    for (int l = 0; l <= model.layers; ++l)
        residuals_.emplace_back(backend, std::vector<int64_t>{N, C});
    layers_.resize(static_cast<std::size_t>(model.layers));
    moe_layer_indices_ = moe_layer_indices(model);
    moe_.resize(static_cast<std::size_t>(model.layers));
    for (const int l : moe_layer_indices_) {
        moe_[l] = std::make_unique<MoeLayer>(
            backend, model, static_cast<int>(N), backend.pads_expert_rows(),
            make_token_dispatcher(backend, expert_parallel, model.moe.experts));
    }
    offsets_.resize(static_cast<std::size_t>(model.layers));
    for (int l = 0; l < model.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        auto at = [&](const std::string& name) { return index.at(b + name).offset; };
        LayerOffsets& o = offsets_[l];
        o.ln1_weight = at("ln1.weight");
        o.ln1_bias = at("ln1.bias");
        o.qkv_weight = at("attn.qkv.weight");
        o.qkv_bias = at("attn.qkv.bias");
        o.attn_proj_weight = at("attn.proj.weight");
        o.attn_proj_bias = at("attn.proj.bias");
        o.ln2_weight = at("ln2.weight");
        o.ln2_bias = at("ln2.bias");
        if (moe_[l]) {
            o.router = at("mlp.router.weight");
            // expert 0's tensors and one stride to the next expert's (the backend's expert
            // GEMMs take all experts in one strided call)
            auto expert = [&](int e, const std::string& name) {
                return at("mlp.experts." + std::to_string(e) + "." + name);
            };
            o.expert_fc_weight = expert(0, "fc.weight");
            o.expert_fc_bias = expert(0, "fc.bias");
            o.expert_proj_weight = expert(0, "proj.weight");
            o.expert_proj_bias = expert(0, "proj.bias");
            o.expert_stride =
                model.moe.experts > 1 ? expert(1, "fc.weight") - o.expert_fc_weight : 0;
            for (int e = 0; e < model.moe.experts; ++e) {
                const std::size_t shift = e * o.expert_stride;
                UPCYCLE_ASSERT(expert(e, "fc.weight") == o.expert_fc_weight + shift &&
                                   expert(e, "fc.bias") == o.expert_fc_bias + shift &&
                                   expert(e, "proj.weight") == o.expert_proj_weight + shift &&
                                   expert(e, "proj.bias") == o.expert_proj_bias + shift,
                               "experts' parameters must lie at one stride from each other");
            }
        } else {
            o.fc_weight = at("mlp.fc.weight");
            o.fc_bias = at("mlp.fc.bias");
            o.mlp_proj_weight = at("mlp.proj.weight");
            o.mlp_proj_bias = at("mlp.proj.bias");
        }
        auto& a = layers_[l];
        a.ln1 = Tensor(backend, {N, C});
        a.ln1_mean = Tensor(backend, {N});
        a.ln1_rstd = Tensor(backend, {N});
        a.qkv = Tensor(backend, {N, 3 * C});
        a.atty = Tensor(backend, {N, C});
        a.lse = Tensor(backend, {B, H, T});
        a.residual2 = Tensor(backend, {N, C});
        a.ln2 = Tensor(backend, {N, C});
        a.ln2_mean = Tensor(backend, {N});
        a.ln2_rstd = Tensor(backend, {N});
        if (!moe_[l]) {
            a.fch = Tensor(backend, {N, 4 * C});
            a.fch_gelu = Tensor(backend, {N, 4 * C});
        }
    }
    scratch_ = Tensor(backend, {N, C});
    dln_ = Tensor(backend, {N, C});
    datty_ = Tensor(backend, {N, C});
    dqkv_ = Tensor(backend, {N, 3 * C});
    if (moe_layer_indices_.size() < static_cast<std::size_t>(model.layers)) {
        dfch_gelu_ = Tensor(backend, {N, 4 * C});
        dfch_ = Tensor(backend, {N, 4 * C});
    }
}

MoeTensors TransformerBlocks::moe_tensors(int layer, Tensor& flat) const {
    const LayerOffsets& o = offsets_[layer];
    float* base = flat.f32();
    MoeTensors t;
    t.router = base + o.router;
    t.experts = {base + o.expert_fc_weight, base + o.expert_fc_bias, base + o.expert_proj_weight,
                 base + o.expert_proj_bias, o.expert_stride};
    return t;
}

void TransformerBlocks::forward(Tensor& parameters, int B, Pass pass) {
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the blocks were allocated for");
    const int T = T_, C = config_.channels, H = config_.heads, N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    const float* w = parameters.f32();
    batch_ = B;
    for (int l = 0; l < config_.layers; ++l) {
        const LayerOffsets& o = offsets_[l];
        LayerActivations& a = layers_[l];
        const float* residual = residuals_[l].f32();
        be.layernorm_forward(a.ln1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), residual,
                             w + o.ln1_weight, w + o.ln1_bias, N, C);
        be.matmul_forward(a.qkv.f32(), a.ln1.f32(), w + o.qkv_weight, w + o.qkv_bias, N, C, 3 * C);
        be.attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), B, T, C, H, causal_);
        be.matmul_forward(scratch_.f32(), a.atty.f32(), w + o.attn_proj_weight,
                          w + o.attn_proj_bias, N, C, C);
        be.add(a.residual2.f32(), residual, scratch_.f32(), NC);
        be.layernorm_forward(a.ln2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), a.residual2.f32(),
                             w + o.ln2_weight, w + o.ln2_bias, N, C);
        if (moe_[l]) {
            const double cf = pass == Pass::Train ? config_.moe.capacity_factor
                                                  : config_.moe.eval_capacity_factor;
            moe_[l]->forward(scratch_.f32(), a.ln2.f32(), N, moe_tensors(l, parameters), cf);
        } else {
            be.matmul_forward(a.fch.f32(), a.ln2.f32(), w + o.fc_weight, w + o.fc_bias, N, C,
                              4 * C);
            be.gelu_forward(a.fch_gelu.f32(), a.fch.f32(), NC * 4);
            be.matmul_forward(scratch_.f32(), a.fch_gelu.f32(), w + o.mlp_proj_weight,
                              w + o.mlp_proj_bias, N, 4 * C, C);
        }
        be.add(residuals_[l + 1].f32(), a.residual2.f32(), scratch_.f32(), NC);
    }
}

void TransformerBlocks::backward(Tensor& parameters, Tensor& gradients, float* dresidual) {
    const int B = batch_, T = T_, C = config_.channels, H = config_.heads, N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    const float* w = parameters.f32();
    float* dw = gradients.f32();
    // dresidual always holds the gradient of the residual stream at the current point
    for (int l = config_.layers - 1; l >= 0; --l) {
        const LayerOffsets& o = offsets_[l];
        LayerActivations& a = layers_[l];
        // MLP branch: residual3 = residual2 + mlp(ln2(residual2)), mlp dense or MoE
        be.zero(dln_.f32(), NC * sizeof(float));
        if (moe_[l]) {
            MoeTensors grads = moe_tensors(l, gradients);
            moe_[l]->backward(dln_.f32(), dresidual, a.ln2.f32(), moe_tensors(l, parameters),
                              grads);
        } else {
            be.zero(dfch_gelu_.f32(), NC * 4 * sizeof(float));
            be.matmul_backward(dfch_gelu_.f32(), dw + o.mlp_proj_weight, dw + o.mlp_proj_bias,
                               dresidual, a.fch_gelu.f32(), w + o.mlp_proj_weight, N, 4 * C, C);
            be.zero(dfch_.f32(), NC * 4 * sizeof(float));
            be.gelu_backward(dfch_.f32(), a.fch.f32(), dfch_gelu_.f32(), NC * 4);
            be.matmul_backward(dln_.f32(), dw + o.fc_weight, dw + o.fc_bias, dfch_.f32(),
                               a.ln2.f32(), w + o.fc_weight, N, C, 4 * C);
        }
        be.layernorm_backward(dresidual, dw + o.ln2_weight, dw + o.ln2_bias, dln_.f32(),
                              a.residual2.f32(), w + o.ln2_weight, a.ln2_mean.f32(),
                              a.ln2_rstd.f32(), N, C);
        // attention branch: residual2 = residual + proj(attention(qkv(ln1(residual))))
        be.zero(datty_.f32(), NC * sizeof(float));
        be.matmul_backward(datty_.f32(), dw + o.attn_proj_weight, dw + o.attn_proj_bias, dresidual,
                           a.atty.f32(), w + o.attn_proj_weight, N, C, C);
        be.zero(dqkv_.f32(), NC * 3 * sizeof(float));
        be.attention_backward(dqkv_.f32(), datty_.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(), B,
                              T, C, H, causal_);
        be.zero(dln_.f32(), NC * sizeof(float));
        be.matmul_backward(dln_.f32(), dw + o.qkv_weight, dw + o.qkv_bias, dqkv_.f32(), a.ln1.f32(),
                           w + o.qkv_weight, N, C, 3 * C);
        be.layernorm_backward(dresidual, dw + o.ln1_weight, dw + o.ln1_bias, dln_.f32(),
                              residuals_[l].f32(), w + o.ln1_weight, a.ln1_mean.f32(),
                              a.ln1_rstd.f32(), N, C);
    }
}

std::vector<RoutingStats> TransformerBlocks::routing_stats() const {
    std::vector<RoutingStats> out;
    for (const int l : moe_layer_indices_) out.push_back(moe_[l]->stats());
    return out;
}

double TransformerBlocks::auxiliary_loss() const {
    double total = 0;
    for (const int l : moe_layer_indices_) total += moe_[l]->auxiliary_loss();
    return total;
}

}  // namespace upcycle
