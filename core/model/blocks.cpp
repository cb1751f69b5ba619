#include "core/model/blocks.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

void LayoutBuilder::add(std::string name, std::vector<int64_t> shape) {
    ParamInfo info;
    info.name = std::move(name);
    info.numel = static_cast<std::size_t>(shape_numel(shape));
    info.is_matrix = shape.size() == 2;
    info.shape = std::move(shape);
    info.offset = offset_;
    offset_ += info.numel;
    layout_.push_back(std::move(info));
}

void LayoutBuilder::add_blocks(const ModelConfig& model) {
    const int64_t C = model.channels;
    const std::vector<int> moe_layers = moe_layer_indices(model);
    for (int l = 0; l < model.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        add(b + "ln1.weight", {C});
        add(b + "ln1.bias", {C});
        add(b + "attn.qkv.weight", {3 * C, C});
        add(b + "attn.qkv.bias", {3 * C});
        add(b + "attn.proj.weight", {C, C});
        add(b + "attn.proj.bias", {C});
        add(b + "ln2.weight", {C});
        add(b + "ln2.bias", {C});
        if (std::find(moe_layers.begin(), moe_layers.end(), l) != moe_layers.end()) {
            const int64_t E = model.moe.experts;
            add(b + "mlp.router.weight", {E, C});
            for (int64_t e = 0; e < E; ++e) {
                const std::string x = b + "mlp.experts." + std::to_string(e) + ".";
                add(x + "fc.weight", {4 * C, C});
                add(x + "fc.bias", {4 * C});
                add(x + "proj.weight", {C, 4 * C});
                add(x + "proj.bias", {C});
            }
        } else {
            add(b + "mlp.fc.weight", {4 * C, C});
            add(b + "mlp.fc.bias", {4 * C});
            add(b + "mlp.proj.weight", {C, 4 * C});
            add(b + "mlp.proj.bias", {C});
        }
    }
}

ParameterIndex::ParameterIndex(const std::vector<ParamInfo>& layout) : layout_(&layout) {
    for (std::size_t i = 0; i < layout.size(); ++i) index_[layout[i].name] = i;
}

const ParamInfo& ParameterIndex::at(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw UserError("", name, "no such parameter in this model");
    return (*layout_)[it->second];
}

std::vector<float> init_parameters(const std::vector<ParamInfo>& layout, int layers, uint64_t seed,
                                   const std::vector<std::string>& extra_normal) {
    Rng rng(seed);
    const std::size_t total = layout.empty() ? 0 : layout.back().offset + layout.back().numel;
    std::vector<float> host(total, 0.0f);
    const float std_base = 0.02f;
    const float std_residual = std_base / std::sqrt(2.0f * static_cast<float>(layers));
    auto ends_with = [](const std::string& s, const std::string& suffix) {
        return s.size() >= suffix.size() &&
               s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    for (const auto& info : layout) {
        float* dst = host.data() + info.offset;
        const bool normal = info.is_matrix || std::find(extra_normal.begin(), extra_normal.end(),
                                                        info.name) != extra_normal.end();
        if (normal) {
            // projections back into the residual stream: attention, MLP and every expert's
            const bool residual_out = ends_with(info.name, "attn.proj.weight") ||
                                      ends_with(info.name, "mlp.proj.weight") ||
                                      (info.name.find(".mlp.experts.") != std::string::npos &&
                                       ends_with(info.name, ".proj.weight"));
            const float std = residual_out ? std_residual : std_base;
            for (std::size_t i = 0; i < info.numel; ++i) dst[i] = std * rng.normal();
        } else if (ends_with(info.name, "ln1.weight") || ends_with(info.name, "ln2.weight") ||
                   info.name == "lnf.weight") {
            std::fill(dst, dst + info.numel, 1.0f);  // LayerNorm gains
        }  // biases stay zero
    }
    return host;
}

TransformerBlocks::TransformerBlocks(Backend& backend, const ModelConfig& model, int max_batch,
                                     int T, bool causal)
    : backend_(&backend), config_(model), max_batch_(max_batch), T_(T), causal_(causal) {
    const int64_t B = max_batch, C = model.channels, H = model.heads, N = B * T;
    for (int l = 0; l <= model.layers; ++l) residuals_.emplace_back(backend, std::vector<int64_t>{N, C});
    layers_.resize(static_cast<std::size_t>(model.layers));
    moe_layer_indices_ = moe_layer_indices(model);
    moe_.resize(static_cast<std::size_t>(model.layers));
    for (const int l : moe_layer_indices_) {
        moe_[l] = std::make_unique<MoeLayer>(backend, model, static_cast<int>(N));
    }
    for (int l = 0; l < model.layers; ++l) {
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

MoeTensors TransformerBlocks::moe_tensors(const ParameterIndex& index, int layer, Tensor& flat) const {
    const std::string b = "blocks." + std::to_string(layer) + ".mlp.";
    auto at = [&](const std::string& name) { return flat.f32() + index.at(name).offset; };
    MoeTensors t;
    t.router = at(b + "router.weight");
    for (int e = 0; e < config_.moe.experts; ++e) {
        const std::string x = b + "experts." + std::to_string(e) + ".";
        t.experts.fc_weight.push_back(at(x + "fc.weight"));
        t.experts.fc_bias.push_back(at(x + "fc.bias"));
        t.experts.proj_weight.push_back(at(x + "proj.weight"));
        t.experts.proj_bias.push_back(at(x + "proj.bias"));
    }
    return t;
}

void TransformerBlocks::forward(const ParameterIndex& index, Tensor& parameters, int B, Pass pass) {
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the blocks were allocated for");
    const int T = T_, C = config_.channels, H = config_.heads, N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    auto p = [&](const std::string& name) -> const float* {
        return parameters.f32() + index.at(name).offset;
    };
    batch_ = B;
    for (int l = 0; l < config_.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        const float* residual = residuals_[l].f32();
        be.layernorm_forward(a.ln1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), residual,
                             p(b + "ln1.weight"), p(b + "ln1.bias"), N, C);
        be.matmul_forward(a.qkv.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"),
                          p(b + "attn.qkv.bias"), N, C, 3 * C);
        be.attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), B, T, C, H, causal_);
        be.matmul_forward(scratch_.f32(), a.atty.f32(), p(b + "attn.proj.weight"),
                          p(b + "attn.proj.bias"), N, C, C);
        be.add(a.residual2.f32(), residual, scratch_.f32(), NC);
        be.layernorm_forward(a.ln2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), a.residual2.f32(),
                             p(b + "ln2.weight"), p(b + "ln2.bias"), N, C);
        if (moe_[l]) {
            const double cf = pass == Pass::Train ? config_.moe.capacity_factor
                                                  : config_.moe.eval_capacity_factor;
            moe_[l]->forward(scratch_.f32(), a.ln2.f32(), N, moe_tensors(index, l, parameters), cf);
        } else {
            be.matmul_forward(a.fch.f32(), a.ln2.f32(), p(b + "mlp.fc.weight"),
                              p(b + "mlp.fc.bias"), N, C, 4 * C);
            be.gelu_forward(a.fch_gelu.f32(), a.fch.f32(), NC * 4);
            be.matmul_forward(scratch_.f32(), a.fch_gelu.f32(), p(b + "mlp.proj.weight"),
                              p(b + "mlp.proj.bias"), N, 4 * C, C);
        }
        be.add(residuals_[l + 1].f32(), a.residual2.f32(), scratch_.f32(), NC);
    }
}

void TransformerBlocks::backward(const ParameterIndex& index, Tensor& parameters,
                                 Tensor& gradients, float* dresidual) {
    const int B = batch_, T = T_, C = config_.channels, H = config_.heads, N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    auto p = [&](const std::string& name) -> const float* {
        return parameters.f32() + index.at(name).offset;
    };
    auto g = [&](const std::string& name) { return gradients.f32() + index.at(name).offset; };
    // dresidual always holds the gradient of the residual stream at the current point
    for (int l = config_.layers - 1; l >= 0; --l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        // MLP branch: residual3 = residual2 + mlp(ln2(residual2)), mlp dense or MoE
        be.zero(dln_.f32(), NC * sizeof(float));
        if (moe_[l]) {
            MoeTensors grads = moe_tensors(index, l, gradients);
            moe_[l]->backward(dln_.f32(), dresidual, a.ln2.f32(), moe_tensors(index, l, parameters),
                              grads);
        } else {
            be.zero(dfch_gelu_.f32(), NC * 4 * sizeof(float));
            be.matmul_backward(dfch_gelu_.f32(), g(b + "mlp.proj.weight"), g(b + "mlp.proj.bias"),
                               dresidual, a.fch_gelu.f32(), p(b + "mlp.proj.weight"), N, 4 * C, C);
            be.zero(dfch_.f32(), NC * 4 * sizeof(float));
            be.gelu_backward(dfch_.f32(), a.fch.f32(), dfch_gelu_.f32(), NC * 4);
            be.matmul_backward(dln_.f32(), g(b + "mlp.fc.weight"), g(b + "mlp.fc.bias"),
                               dfch_.f32(), a.ln2.f32(), p(b + "mlp.fc.weight"), N, C, 4 * C);
        }
        be.layernorm_backward(dresidual, g(b + "ln2.weight"), g(b + "ln2.bias"), dln_.f32(),
                              a.residual2.f32(), p(b + "ln2.weight"), a.ln2_mean.f32(),
                              a.ln2_rstd.f32(), N, C);
        // attention branch: residual2 = residual + proj(attention(qkv(ln1(residual))))
        be.zero(datty_.f32(), NC * sizeof(float));
        be.matmul_backward(datty_.f32(), g(b + "attn.proj.weight"), g(b + "attn.proj.bias"),
                           dresidual, a.atty.f32(), p(b + "attn.proj.weight"), N, C, C);
        be.zero(dqkv_.f32(), NC * 3 * sizeof(float));
        be.attention_backward(dqkv_.f32(), datty_.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(),
                              B, T, C, H, causal_);
        be.zero(dln_.f32(), NC * sizeof(float));
        be.matmul_backward(dln_.f32(), g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"),
                           dqkv_.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"), N, C, 3 * C);
        be.layernorm_backward(dresidual, g(b + "ln1.weight"), g(b + "ln1.bias"), dln_.f32(),
                              residuals_[l].f32(), p(b + "ln1.weight"), a.ln1_mean.f32(),
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
