#include "core/model/vit.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

std::vector<ParamInfo> vit_parameter_layout(const ModelConfig& model) {
    const VitShape shape(model);
    const int64_t C = model.channels, pp = int64_t{shape.patch} * shape.patch;
    const int64_t T = shape.tokens(), K = shape.classes;
    LayoutBuilder layout;
    layout.add("patch.weight", {C, pp});
    layout.add("patch.bias", {C});
    layout.add("cls", {C});
    layout.add("wpe.weight", {T, C});
    layout.add_blocks(model);
    layout.add("lnf.weight", {C});
    layout.add("lnf.bias", {C});
    layout.add("head.weight", {K, C});
    layout.add("head.bias", {K});
    return layout.take();
}

Vit::Vit(Backend& backend, const ModelConfig& model, int max_batch, Communicator* expert_parallel)
    : TransformerModel(backend, model, max_batch, vit_parameter_layout(model),
                       VitShape(model).tokens(), /*causal=*/false, expert_parallel),
      shape_(model) {
    const int patch = shape_.patch, image = shape_.image, classes = shape_.classes;
    UPCYCLE_ASSERT(patch > 0 && image > 0 && image % patch == 0,
                   "the image side must be a multiple of the patch size");
    UPCYCLE_ASSERT(classes > 0, "classes must be positive");
    const int64_t B = max_batch, T = shape_.tokens(), P = shape_.patches();
    const int64_t C = model.channels, N = B * T, K = classes;
    const int64_t pp = int64_t{patch} * patch;
    images_ = Tensor(backend, {B, image, image});
    labels_ = Tensor(backend, {B}, DType::I32);
    patches_ = Tensor(backend, {B * P, pp});
    patch_emb_ = Tensor(backend, {B * P, C});
    cls_out_ = Tensor(backend, {B, C});
    lnf = Tensor(backend, {B, C});
    lnf_mean = Tensor(backend, {B});
    lnf_rstd = Tensor(backend, {B});
    logits_ = Tensor(backend, {B, K});
    losses_ = Tensor(backend, {B});
    argmax_ = Tensor(backend, {B}, DType::I32);
    dcls_out_ = Tensor(backend, {B, C});
    dlnf_ = Tensor(backend, {B, C});
    dresidual_ = Tensor(backend, {N, C});
    dpatch_emb_ = Tensor(backend, {B * P, C});
}

void Vit::init_weights(uint64_t seed) {
    parameters_.copy_from_host(init_parameters(layout_, config_.layers, seed, {"cls"}));
}

ForwardStats Vit::forward(std::span<const float> images, std::span<const int32_t> labels, int B,
                          Pass pass) {
    const int T = shape_.tokens(), P = shape_.patches(), S = shape_.image, ps = shape_.patch;
    const int C = config_.channels, K = shape_.classes;
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the model was allocated for");
    UPCYCLE_ASSERT(images.size() == static_cast<std::size_t>(B) * S * S,
                   "images must hold B·image·image pixels");
    UPCYCLE_ASSERT(static_cast<int>(labels.size()) == B, "labels must hold B entries");
    for (int i = 0; i < B; ++i) UPCYCLE_ASSERT(labels[i] < K, "label out of the class range");
    Backend& be = *backend_;
    be.upload(images_.f32(), images.data(), sizeof(float) * images.size());
    be.upload(labels_.i32(), labels.data(), sizeof(int32_t) * B);
    batch_ = B;

    be.patch_embed_input(patches_.f32(), images_.f32(), B, S, S, ps);
    be.matmul_forward(patch_emb_.f32(), patches_.f32(), p("patch.weight"), p("patch.bias"), B * P,
                      ps * ps, C);
    be.assemble_tokens(blocks_.stream(0), patch_emb_.f32(), p("cls"), p("wpe.weight"), B, P, C);
    blocks_.forward(parameters_, B, pass);
    be.gather_class_tokens(cls_out_.f32(), blocks_.stream(config_.layers), B, T, C);
    be.layernorm_forward(lnf.f32(), lnf_mean.f32(), lnf_rstd.f32(), cls_out_.f32(), p("lnf.weight"),
                         p("lnf.bias"), B, C);
    be.matmul_forward(logits_.f32(), lnf.f32(), p("head.weight"), p("head.bias"), B, C, K);

    ForwardStats stats = classification_loss(be, logits_.f32(), losses_.f32(), argmax_.i32(),
                                             labels_.i32(), labels, K, pass);
    if (report_aux_loss_) stats.aux_loss = blocks_.auxiliary_loss();
    have_train_forward_ = pass == Pass::Train;
    logits_valid_ = !have_train_forward_;
    return stats;
}

void Vit::backward(Gradients mode) {
    UPCYCLE_ASSERT(have_train_forward_, "backward() needs a preceding Train forward()");
    const int B = batch_, T = shape_.tokens(), P = shape_.patches(), ps = shape_.patch;
    const int C = config_.channels, K = shape_.classes;
    const int N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    const std::size_t BC = static_cast<std::size_t>(B) * C;
    Backend& be = *backend_;
    if (mode == Gradients::Overwrite) gradients_.set_zero();

    // head and final LayerNorm on the class tokens: logits_ holds dlogits
    be.zero(dlnf_.f32(), BC * sizeof(float));
    be.matmul_backward(dlnf_.f32(), g("head.weight"), g("head.bias"), logits_.f32(), lnf.f32(),
                       p("head.weight"), B, C, K);
    be.zero(dcls_out_.f32(), BC * sizeof(float));
    be.layernorm_backward(dcls_out_.f32(), g("lnf.weight"), g("lnf.bias"), dlnf_.f32(),
                          cls_out_.f32(), p("lnf.weight"), lnf_mean.f32(), lnf_rstd.f32(), B, C);
    be.zero(dresidual_.f32(), NC * sizeof(float));
    be.scatter_class_tokens(dresidual_.f32(), dcls_out_.f32(), B, T, C);

    blocks_.backward(parameters_, gradients_, dresidual_.f32());
    const std::size_t PC = static_cast<std::size_t>(B) * P * C;
    be.zero(dpatch_emb_.f32(), PC * sizeof(float));
    be.assemble_tokens_backward(dpatch_emb_.f32(), g("cls"), g("wpe.weight"), dresidual_.f32(), B,
                                P, C);
    be.matmul_backward(nullptr, g("patch.weight"), g("patch.bias"), dpatch_emb_.f32(),
                       patches_.f32(), p("patch.weight"), B * P, ps * ps, C);
    have_train_forward_ = false;  // dlogits are consumed
}

std::vector<float> Vit::logits_host() const {
    UPCYCLE_ASSERT(logits_valid_, "logits are only kept by an Evaluate forward");
    const std::size_t n = static_cast<std::size_t>(batch_) * shape_.classes;
    std::vector<float> out(n);
    backend_->download(out.data(), logits_.f32(), n * sizeof(float));
    return out;
}

std::vector<float> Vit::features_host() const {
    const std::size_t n = static_cast<std::size_t>(batch_) * config_.channels;
    std::vector<float> out(n);
    backend_->download(out.data(), lnf.f32(), n * sizeof(float));
    return out;
}

std::vector<float> Vit::class_tokens_host() const {
    const std::size_t n = static_cast<std::size_t>(batch_) * config_.channels;
    std::vector<float> out(n);
    backend_->download(out.data(), cls_out_.f32(), n * sizeof(float));
    return out;
}

}  // namespace upcycle
