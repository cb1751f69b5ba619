#include "core/model/gpt.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

std::vector<ParamInfo> gpt_parameter_layout(const ModelConfig& config) {
    const int64_t V = config.vocab_size, T = config.context, C = config.channels;
    const std::vector<int> moe_layers = moe_layer_indices(config);
    std::vector<ParamInfo> layout;
    std::size_t offset = 0;
    auto add = [&](std::string name, std::vector<int64_t> shape) {
        ParamInfo info;
        info.name = std::move(name);
        info.numel = static_cast<std::size_t>(shape_numel(shape));
        info.is_matrix = shape.size() == 2;
        info.shape = std::move(shape);
        info.offset = offset;
        offset += info.numel;
        layout.push_back(std::move(info));
    };
    add("wte.weight", {V, C});
    add("wpe.weight", {T, C});
    for (int l = 0; l < config.layers; ++l) {
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
            const int64_t E = config.moe.experts;
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
    add("lnf.weight", {C});
    add("lnf.bias", {C});
    return layout;
}

Gpt::Gpt(Backend& backend, const ModelConfig& config, int max_batch)
    : backend_(&backend), config_(config), max_batch_(max_batch) {
    UPCYCLE_ASSERT(max_batch > 0, "max_batch must be positive");
    UPCYCLE_ASSERT(config.channels % config.heads == 0, "channels must divide into heads");
    layout_ = gpt_parameter_layout(config);
    for (std::size_t i = 0; i < layout_.size(); ++i) index_[layout_[i].name] = i;
    num_parameters_ = layout_.back().offset + layout_.back().numel;
    const auto P = static_cast<int64_t>(num_parameters_);
    parameters_ = Tensor::zeros(backend, {P});
    gradients_ = Tensor::zeros(backend, {P});

    const int64_t B = max_batch, T = config.context, C = config.channels, H = config.heads;
    const int64_t N = B * T, V = config.vocab_size;
    inputs_ = Tensor(backend, {B, T}, DType::I32);
    targets_ = Tensor(backend, {B, T}, DType::I32);
    for (int l = 0; l <= config.layers; ++l) residuals_.emplace_back(backend, std::vector<int64_t>{N, C});
    layers_.resize(static_cast<std::size_t>(config.layers));
    moe_layer_indices_ = moe_layer_indices(config);
    moe_.resize(static_cast<std::size_t>(config.layers));
    for (const int l : moe_layer_indices_) {
        moe_[l] = std::make_unique<MoeLayer>(backend, config, static_cast<int>(N));
    }
    for (int l = 0; l < config.layers; ++l) {
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
    lnf = Tensor(backend, {N, C});
    lnf_mean = Tensor(backend, {N});
    lnf_rstd = Tensor(backend, {N});
    logits_ = Tensor(backend, {N, V});
    losses_ = Tensor(backend, {N});
    argmax_ = Tensor(backend, {N}, DType::I32);
    scratch_ = Tensor(backend, {N, C});
    dresidual_ = Tensor(backend, {N, C});
    dln_ = Tensor(backend, {N, C});
    datty_ = Tensor(backend, {N, C});
    dqkv_ = Tensor(backend, {N, 3 * C});
    dfch_gelu_ = Tensor(backend, {N, 4 * C});
    dfch_ = Tensor(backend, {N, 4 * C});
}

const ParamInfo& Gpt::param_info(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw UserError("", name, "no such parameter in this GPT");
    return layout_[it->second];
}

const float* Gpt::p(const std::string& name) const {
    return parameters_.f32() + param_info(name).offset;
}
float* Gpt::g(const std::string& name) { return gradients_.f32() + param_info(name).offset; }

void Gpt::init_weights(uint64_t seed) {
    Rng rng(seed);
    std::vector<float> host(num_parameters_, 0.0f);
    const float std_base = 0.02f;
    const float std_residual = std_base / std::sqrt(2.0f * static_cast<float>(config_.layers));
    auto ends_with = [](const std::string& s, const std::string& suffix) {
        return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    for (const auto& info : layout_) {
        float* dst = host.data() + info.offset;
        if (info.is_matrix) {
            // projections back into the residual stream: attention, MLP and every expert's
            const bool residual_out = ends_with(info.name, "attn.proj.weight") ||
                                      ends_with(info.name, "mlp.proj.weight") ||
                                      (info.name.find(".mlp.experts.") != std::string::npos &&
                                       ends_with(info.name, ".proj.weight"));
            const float std = residual_out ? std_residual : std_base;
            for (std::size_t i = 0; i < info.numel; ++i) dst[i] = std * rng.normal();
        } else if (ends_with(info.name, ".weight")) {  // LayerNorm gain
            std::fill(dst, dst + info.numel, 1.0f);
        }  // biases stay zero
    }
    parameters_.copy_from_host(host);
}

ForwardStats Gpt::forward(std::span<const int32_t> inputs, std::span<const int32_t> targets,
                          int B, Pass pass) {
    const int T = config_.context, C = config_.channels, H = config_.heads;
    const int V = config_.vocab_size;
    const int N = B * T;
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the model was allocated for");
    UPCYCLE_ASSERT(static_cast<int>(inputs.size()) == N && static_cast<int>(targets.size()) == N,
                   "inputs and targets must hold B·T tokens");
    int64_t predicted = 0;
    for (int i = 0; i < N; ++i) {
        UPCYCLE_ASSERT(inputs[i] >= 0 && inputs[i] < V, "input token out of the vocabulary");
        UPCYCLE_ASSERT(targets[i] < V, "target token out of the vocabulary");
        predicted += targets[i] >= 0;
    }
    Backend& be = *backend_;
    be.upload(inputs_.i32(), inputs.data(), sizeof(int32_t) * N);
    be.upload(targets_.i32(), targets.data(), sizeof(int32_t) * N);
    batch_ = B;
    predicted_ = predicted;

    be.embedding_forward(residuals_[0].f32(), inputs_.i32(), p("wte.weight"), p("wpe.weight"), B,
                         T, C);
    for (int l = 0; l < config_.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        const float* residual = residuals_[l].f32();
        be.layernorm_forward(a.ln1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), residual,
                             p(b + "ln1.weight"), p(b + "ln1.bias"), N, C);
        be.matmul_forward(a.qkv.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"),
                          p(b + "attn.qkv.bias"), N, C, 3 * C);
        be.attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), B, T, C, H, /*causal=*/true);
        be.matmul_forward(scratch_.f32(), a.atty.f32(), p(b + "attn.proj.weight"),
                          p(b + "attn.proj.bias"), N, C, C);
        be.add(a.residual2.f32(), residual, scratch_.f32(), static_cast<std::size_t>(N) * C);
        be.layernorm_forward(a.ln2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), a.residual2.f32(),
                             p(b + "ln2.weight"), p(b + "ln2.bias"), N, C);
        if (moe_[l]) {
            const double cf = pass == Pass::Train ? config_.moe.capacity_factor
                                                  : config_.moe.eval_capacity_factor;
            moe_[l]->forward(scratch_.f32(), a.ln2.f32(), N, moe_tensors(l, parameters_), cf);
        } else {
            be.matmul_forward(a.fch.f32(), a.ln2.f32(), p(b + "mlp.fc.weight"),
                              p(b + "mlp.fc.bias"), N, C, 4 * C);
            be.gelu_forward(a.fch_gelu.f32(), a.fch.f32(), static_cast<std::size_t>(N) * 4 * C);
            be.matmul_forward(scratch_.f32(), a.fch_gelu.f32(), p(b + "mlp.proj.weight"),
                              p(b + "mlp.proj.bias"), N, 4 * C, C);
        }
        be.add(residuals_[l + 1].f32(), a.residual2.f32(), scratch_.f32(),
               static_cast<std::size_t>(N) * C);
    }
    be.layernorm_forward(lnf.f32(), lnf_mean.f32(), lnf_rstd.f32(),
                         residuals_[config_.layers].f32(), p("lnf.weight"), p("lnf.bias"), N, C);
    be.matmul_forward(logits_.f32(), lnf.f32(), p("wte.weight"), nullptr, N, C, V);

    const bool train = pass == Pass::Train;
    const float grad_scale = predicted > 0 ? 1.0f / static_cast<float>(predicted) : 0.0f;
    // Train: dlogits overwrite the logits in place (they are not needed any more).
    be.softmax_crossentropy(losses_.f32(), train ? logits_.f32() : nullptr,
                            train ? nullptr : argmax_.i32(), logits_.f32(), targets_.i32(), N, V,
                            grad_scale);
    have_train_forward_ = train;

    ForwardStats stats;
    std::vector<float> losses(static_cast<std::size_t>(N));
    be.download(losses.data(), losses_.f32(), sizeof(float) * N);
    for (float x : losses) stats.loss_sum += x;
    stats.tokens = predicted;
    for (const int l : moe_layer_indices_) stats.aux_loss += moe_[l]->auxiliary_loss();
    if (!train) {
        std::vector<int32_t> argmax(static_cast<std::size_t>(N));
        be.download(argmax.data(), argmax_.i32(), sizeof(int32_t) * N);
        for (int i = 0; i < N; ++i) stats.correct += targets[i] >= 0 && argmax[i] == targets[i];
    }
    return stats;
}

void Gpt::backward() {
    UPCYCLE_ASSERT(have_train_forward_, "backward() needs a preceding Train forward()");
    const int B = batch_, T = config_.context, C = config_.channels, H = config_.heads;
    const int V = config_.vocab_size;
    const int N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    gradients_.set_zero();

    // head (tied to wte): logits_ holds dlogits
    be.zero(dln_.f32(), NC * sizeof(float));
    be.matmul_backward(dln_.f32(), g("wte.weight"), nullptr, logits_.f32(), lnf.f32(),
                       p("wte.weight"), N, C, V);
    be.zero(dresidual_.f32(), NC * sizeof(float));
    be.layernorm_backward(dresidual_.f32(), g("lnf.weight"), g("lnf.bias"), dln_.f32(),
                          residuals_[config_.layers].f32(), p("lnf.weight"), lnf_mean.f32(),
                          lnf_rstd.f32(), N, C);

    // dresidual_ always holds the gradient of the residual stream at the current point
    for (int l = config_.layers - 1; l >= 0; --l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        // MLP branch: residual3 = residual2 + mlp(ln2(residual2)), mlp dense or MoE
        be.zero(dln_.f32(), NC * sizeof(float));
        if (moe_[l]) {
            MoeTensors grads = moe_tensors(l, gradients_);
            moe_[l]->backward(dln_.f32(), dresidual_.f32(), a.ln2.f32(), moe_tensors(l, parameters_),
                              grads);
        } else {
            be.zero(dfch_gelu_.f32(), NC * 4 * sizeof(float));
            be.matmul_backward(dfch_gelu_.f32(), g(b + "mlp.proj.weight"), g(b + "mlp.proj.bias"),
                               dresidual_.f32(), a.fch_gelu.f32(), p(b + "mlp.proj.weight"), N,
                               4 * C, C);
            be.zero(dfch_.f32(), NC * 4 * sizeof(float));
            be.gelu_backward(dfch_.f32(), a.fch.f32(), dfch_gelu_.f32(), NC * 4);
            be.matmul_backward(dln_.f32(), g(b + "mlp.fc.weight"), g(b + "mlp.fc.bias"),
                               dfch_.f32(), a.ln2.f32(), p(b + "mlp.fc.weight"), N, C, 4 * C);
        }
        be.layernorm_backward(dresidual_.f32(), g(b + "ln2.weight"), g(b + "ln2.bias"),
                              dln_.f32(), a.residual2.f32(), p(b + "ln2.weight"),
                              a.ln2_mean.f32(), a.ln2_rstd.f32(), N, C);
        // attention branch: residual2 = residual + proj(attention(qkv(ln1(residual))))
        be.zero(datty_.f32(), NC * sizeof(float));
        be.matmul_backward(datty_.f32(), g(b + "attn.proj.weight"), g(b + "attn.proj.bias"),
                           dresidual_.f32(), a.atty.f32(), p(b + "attn.proj.weight"), N, C, C);
        be.zero(dqkv_.f32(), NC * 3 * sizeof(float));
        be.attention_backward(dqkv_.f32(), datty_.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(),
                              B, T, C, H, /*causal=*/true);
        be.zero(dln_.f32(), NC * sizeof(float));
        be.matmul_backward(dln_.f32(), g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"),
                           dqkv_.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"), N, C, 3 * C);
        be.layernorm_backward(dresidual_.f32(), g(b + "ln1.weight"), g(b + "ln1.bias"),
                              dln_.f32(), residuals_[l].f32(), p(b + "ln1.weight"),
                              a.ln1_mean.f32(), a.ln1_rstd.f32(), N, C);
    }
    be.embedding_backward(g("wte.weight"), g("wpe.weight"), dresidual_.f32(), inputs_.i32(), B, T,
                          C);
    have_train_forward_ = false;  // dlogits are consumed
}

MoeTensors Gpt::moe_tensors(int layer, Tensor& flat) {
    const std::string b = "blocks." + std::to_string(layer) + ".mlp.";
    auto at = [&](const std::string& name) { return flat.f32() + param_info(name).offset; };
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

std::vector<RoutingStats> Gpt::routing_stats() const {
    std::vector<RoutingStats> out;
    for (const int l : moe_layer_indices_) out.push_back(moe_[l]->stats());
    return out;
}

std::vector<float> Gpt::logits_host() const {
    const std::size_t n =
        static_cast<std::size_t>(batch_) * config_.context * config_.vocab_size;
    std::vector<float> out(n);
    backend_->download(out.data(), logits_.f32(), n * sizeof(float));
    return out;
}

}  // namespace upcycle
