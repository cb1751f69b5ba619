#include "core/model/vit.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

// NOTE: the blocks (layout, forward, backward) duplicate gpt.cpp except for causal=false;
// sharing them in core/model/blocks is a follow-up refactor.

std::vector<ParamInfo> vit_parameter_layout(const ModelConfig& model, const VitShape& shape) {
    const int64_t C = model.channels, pp = int64_t{shape.patch} * shape.patch;
    const int64_t T = shape.tokens(), K = shape.classes;
    const std::vector<int> moe_layers = moe_layer_indices(model);
    std::vector<ParamInfo> layout;
    std::size_t offset = 0;
    auto add = [&](std::string name, std::vector<int64_t> shape_) {
        ParamInfo info;
        info.name = std::move(name);
        info.numel = static_cast<std::size_t>(shape_numel(shape_));
        info.is_matrix = shape_.size() == 2;
        info.shape = std::move(shape_);
        info.offset = offset;
        offset += info.numel;
        layout.push_back(std::move(info));
    };
    add("patch.weight", {C, pp});
    add("patch.bias", {C});
    add("cls", {C});
    add("wpe.weight", {T, C});
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
    add("lnf.weight", {C});
    add("lnf.bias", {C});
    add("head.weight", {K, C});
    add("head.bias", {K});
    return layout;
}

Vit::Vit(Backend& backend, const ModelConfig& model, int patch, int image, int classes,
         int max_batch)
    : backend_(&backend), config_(model), shape_{patch, image, classes}, max_batch_(max_batch) {
    UPCYCLE_ASSERT(max_batch > 0, "max_batch must be positive");
    UPCYCLE_ASSERT(patch > 0 && image > 0 && image % patch == 0,
                   "the image side must be a multiple of the patch size");
    UPCYCLE_ASSERT(classes > 0, "classes must be positive");
    UPCYCLE_ASSERT(model.channels % model.heads == 0, "channels must divide into heads");
    layout_ = vit_parameter_layout(model, shape_);
    for (std::size_t i = 0; i < layout_.size(); ++i) index_[layout_[i].name] = i;
    num_parameters_ = layout_.back().offset + layout_.back().numel;
    const auto NP = static_cast<int64_t>(num_parameters_);
    parameters_ = Tensor::zeros(backend, {NP});
    gradients_ = Tensor::zeros(backend, {NP});

    const int64_t B = max_batch, T = shape_.tokens(), P = shape_.patches();
    const int64_t C = model.channels, H = model.heads, N = B * T, K = classes;
    const int64_t pp = int64_t{patch} * patch;
    images_ = Tensor(backend, {B, image, image});
    labels_ = Tensor(backend, {B}, DType::I32);
    patches_ = Tensor(backend, {B * P, pp});
    patch_emb_ = Tensor(backend, {B * P, C});
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
    cls_out_ = Tensor(backend, {B, C});
    lnf = Tensor(backend, {B, C});
    lnf_mean = Tensor(backend, {B});
    lnf_rstd = Tensor(backend, {B});
    logits_ = Tensor(backend, {B, K});
    losses_ = Tensor(backend, {B});
    argmax_ = Tensor(backend, {B}, DType::I32);
    scratch_ = Tensor(backend, {N, C});
    dcls_out_ = Tensor(backend, {B, C});
    dlnf_ = Tensor(backend, {B, C});
    dresidual_ = Tensor(backend, {N, C});
    dln_ = Tensor(backend, {N, C});
    datty_ = Tensor(backend, {N, C});
    dqkv_ = Tensor(backend, {N, 3 * C});
    dfch_gelu_ = Tensor(backend, {N, 4 * C});
    dfch_ = Tensor(backend, {N, 4 * C});
    dpatch_emb_ = Tensor(backend, {B * P, C});
}

const ParamInfo& Vit::param_info(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw UserError("", name, "no such parameter in this ViT");
    return layout_[it->second];
}

const float* Vit::p(const std::string& name) const {
    return parameters_.f32() + param_info(name).offset;
}
float* Vit::g(const std::string& name) { return gradients_.f32() + param_info(name).offset; }

void Vit::init_weights(uint64_t seed) {
    Rng rng(seed);
    std::vector<float> host(num_parameters_, 0.0f);
    const float std_base = 0.02f;
    const float std_residual = std_base / std::sqrt(2.0f * static_cast<float>(config_.layers));
    auto ends_with = [](const std::string& s, const std::string& suffix) {
        return s.size() >= suffix.size() &&
               s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    for (const auto& info : layout_) {
        float* dst = host.data() + info.offset;
        if (info.is_matrix || info.name == "cls") {
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

ForwardStats Vit::forward(std::span<const float> images, std::span<const int32_t> labels, int B,
                          Pass pass) {
    const int T = shape_.tokens(), P = shape_.patches(), S = shape_.image, ps = shape_.patch;
    const int C = config_.channels, H = config_.heads, K = shape_.classes;
    const int N = B * T;
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the model was allocated for");
    UPCYCLE_ASSERT(images.size() == static_cast<std::size_t>(B) * S * S,
                   "images must hold B·image·image pixels");
    UPCYCLE_ASSERT(static_cast<int>(labels.size()) == B, "labels must hold B entries");
    int64_t predicted = 0;
    for (int i = 0; i < B; ++i) {
        UPCYCLE_ASSERT(labels[i] < K, "label out of the class range");
        predicted += labels[i] >= 0;
    }
    Backend& be = *backend_;
    be.upload(images_.f32(), images.data(), sizeof(float) * images.size());
    be.upload(labels_.i32(), labels.data(), sizeof(int32_t) * B);
    batch_ = B;

    be.patch_embed_input(patches_.f32(), images_.f32(), B, S, S, ps);
    be.matmul_forward(patch_emb_.f32(), patches_.f32(), p("patch.weight"), p("patch.bias"), B * P,
                      ps * ps, C);
    be.assemble_tokens(residuals_[0].f32(), patch_emb_.f32(), p("cls"), p("wpe.weight"), B, P, C);
    for (int l = 0; l < config_.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        const float* residual = residuals_[l].f32();
        be.layernorm_forward(a.ln1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), residual,
                             p(b + "ln1.weight"), p(b + "ln1.bias"), N, C);
        be.matmul_forward(a.qkv.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"),
                          p(b + "attn.qkv.bias"), N, C, 3 * C);
        be.attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), B, T, C, H, /*causal=*/false);
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
    be.gather_class_tokens(cls_out_.f32(), residuals_[config_.layers].f32(), B, T, C);
    be.layernorm_forward(lnf.f32(), lnf_mean.f32(), lnf_rstd.f32(), cls_out_.f32(),
                         p("lnf.weight"), p("lnf.bias"), B, C);
    be.matmul_forward(logits_.f32(), lnf.f32(), p("head.weight"), p("head.bias"), B, C, K);

    const bool train = pass == Pass::Train;
    const float grad_scale = predicted > 0 ? 1.0f / static_cast<float>(predicted) : 0.0f;
    be.softmax_crossentropy(losses_.f32(), train ? logits_.f32() : nullptr,
                            train ? nullptr : argmax_.i32(), logits_.f32(), labels_.i32(), B, K,
                            grad_scale);
    have_train_forward_ = train;
    logits_valid_ = !train;

    ForwardStats stats;
    std::vector<float> losses(static_cast<std::size_t>(B));
    be.download(losses.data(), losses_.f32(), sizeof(float) * B);
    for (float x : losses) stats.loss_sum += x;
    stats.tokens = predicted;
    for (const int l : moe_layer_indices_) stats.aux_loss += moe_[l]->auxiliary_loss();
    if (!train) {
        std::vector<int32_t> argmax(static_cast<std::size_t>(B));
        be.download(argmax.data(), argmax_.i32(), sizeof(int32_t) * B);
        for (int i = 0; i < B; ++i) stats.correct += labels[i] >= 0 && argmax[i] == labels[i];
    }
    return stats;
}

void Vit::backward() {
    UPCYCLE_ASSERT(have_train_forward_, "backward() needs a preceding Train forward()");
    const int B = batch_, T = shape_.tokens(), P = shape_.patches(), ps = shape_.patch;
    const int C = config_.channels, H = config_.heads, K = shape_.classes;
    const int N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    const std::size_t BC = static_cast<std::size_t>(B) * C;
    Backend& be = *backend_;
    gradients_.set_zero();

    // head and final LayerNorm on the class tokens: logits_ holds dlogits
    be.zero(dlnf_.f32(), BC * sizeof(float));
    be.matmul_backward(dlnf_.f32(), g("head.weight"), g("head.bias"), logits_.f32(), lnf.f32(),
                       p("head.weight"), B, C, K);
    be.zero(dcls_out_.f32(), BC * sizeof(float));
    be.layernorm_backward(dcls_out_.f32(), g("lnf.weight"), g("lnf.bias"), dlnf_.f32(),
                          cls_out_.f32(), p("lnf.weight"), lnf_mean.f32(), lnf_rstd.f32(), B, C);
    be.zero(dresidual_.f32(), NC * sizeof(float));
    be.scatter_class_tokens(dresidual_.f32(), dcls_out_.f32(), B, T, C);

    for (int l = config_.layers - 1; l >= 0; --l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        LayerActivations& a = layers_[l];
        be.zero(dln_.f32(), NC * sizeof(float));
        if (moe_[l]) {
            MoeTensors grads = moe_tensors(l, gradients_);
            moe_[l]->backward(dln_.f32(), dresidual_.f32(), a.ln2.f32(),
                              moe_tensors(l, parameters_), grads);
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
        be.zero(datty_.f32(), NC * sizeof(float));
        be.matmul_backward(datty_.f32(), g(b + "attn.proj.weight"), g(b + "attn.proj.bias"),
                           dresidual_.f32(), a.atty.f32(), p(b + "attn.proj.weight"), N, C, C);
        be.zero(dqkv_.f32(), NC * 3 * sizeof(float));
        be.attention_backward(dqkv_.f32(), datty_.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(),
                              B, T, C, H, /*causal=*/false);
        be.zero(dln_.f32(), NC * sizeof(float));
        be.matmul_backward(dln_.f32(), g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"),
                           dqkv_.f32(), a.ln1.f32(), p(b + "attn.qkv.weight"), N, C, 3 * C);
        be.layernorm_backward(dresidual_.f32(), g(b + "ln1.weight"), g(b + "ln1.bias"),
                              dln_.f32(), residuals_[l].f32(), p(b + "ln1.weight"),
                              a.ln1_mean.f32(), a.ln1_rstd.f32(), N, C);
    }
    const std::size_t PC = static_cast<std::size_t>(B) * P * C;
    be.zero(dpatch_emb_.f32(), PC * sizeof(float));
    be.assemble_tokens_backward(dpatch_emb_.f32(), g("cls"), g("wpe.weight"), dresidual_.f32(), B,
                                P, C);
    be.matmul_backward(nullptr, g("patch.weight"), g("patch.bias"), dpatch_emb_.f32(),
                       patches_.f32(), p("patch.weight"), B * P, ps * ps, C);
    have_train_forward_ = false;  // dlogits are consumed
}

MoeTensors Vit::moe_tensors(int layer, Tensor& flat) {
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

std::vector<RoutingStats> Vit::routing_stats() const {
    std::vector<RoutingStats> out;
    for (const int l : moe_layer_indices_) out.push_back(moe_[l]->stats());
    return out;
}

std::vector<float> Vit::logits_host() const {
    UPCYCLE_ASSERT(logits_valid_, "logits are only kept by an Evaluate forward");
    const std::size_t n = static_cast<std::size_t>(batch_) * shape_.classes;
    std::vector<float> out(n);
    backend_->download(out.data(), logits_.f32(), n * sizeof(float));
    return out;
}

std::vector<float> Vit::class_tokens_host() const {
    const std::size_t n = static_cast<std::size_t>(batch_) * config_.channels;
    std::vector<float> out(n);
    backend_->download(out.data(), cls_out_.f32(), n * sizeof(float));
    return out;
}

}  // namespace upcycle
