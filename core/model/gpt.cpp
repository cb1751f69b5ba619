#include "core/model/gpt.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"

namespace upcycle {

std::vector<ParamInfo> gpt_parameter_layout(const ModelConfig& config) {
    const int64_t V = config.vocab_size, T = config.context, C = config.channels;
    LayoutBuilder layout;
    layout.add("wte.weight", {V, C});
    layout.add("wpe.weight", {T, C});
    layout.add_blocks(config);
    layout.add("lnf.weight", {C});
    layout.add("lnf.bias", {C});
    return layout.take();
}

Gpt::Gpt(Backend& backend, const ModelConfig& config, int max_batch, Communicator* expert_parallel)
    : TransformerModel(backend, config, max_batch, gpt_parameter_layout(config), config.context,
                       /*causal=*/true, expert_parallel) {
    const int64_t B = max_batch, T = config.context, C = config.channels;
    const int64_t N = B * T, V = config.vocab_size;
    inputs_ = Tensor(backend, {B, T}, DType::I32);
    targets_ = Tensor(backend, {B, T}, DType::I32);
    lnf = Tensor(backend, {N, C});
    lnf_mean = Tensor(backend, {N});
    lnf_rstd = Tensor(backend, {N});
    logits_ = Tensor(backend, {N, V});
    losses_ = Tensor(backend, {N});
    argmax_ = Tensor(backend, {N}, DType::I32);
    dresidual_ = Tensor(backend, {N, C});
    dln_ = Tensor(backend, {N, C});
}

void Gpt::init_weights(uint64_t seed) {
    parameters_.copy_from_host(init_parameters(layout_, config_.layers, seed));
}

ForwardStats Gpt::forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B,
                          Pass pass) {
    const int T = config_.context, C = config_.channels;
    const int V = config_.vocab_size;
    const int N = B * T;
    UPCYCLE_ASSERT(B > 0 && B <= max_batch_, "batch larger than the model was allocated for");
    UPCYCLE_ASSERT(static_cast<int>(inputs.size()) == N && static_cast<int>(targets.size()) == N,
                   "inputs and targets must hold B·T tokens");
    for (int i = 0; i < N; ++i) {
        UPCYCLE_ASSERT(inputs[i] >= 0 && inputs[i] < V, "input token out of the vocabulary");
        UPCYCLE_ASSERT(targets[i] < V, "target token out of the vocabulary");
    }
    Backend& be = *backend_;
    be.upload(inputs_.i32(), inputs.data(), sizeof(int32_t) * N);
    be.upload(targets_.i32(), targets.data(), sizeof(int32_t) * N);
    batch_ = B;

    be.embedding_forward(blocks_.stream(0), inputs_.i32(), p("wte.weight"), p("wpe.weight"), B, T,
                         C);
    blocks_.forward(parameters_, B, pass);
    be.layernorm_forward(lnf.f32(), lnf_mean.f32(), lnf_rstd.f32(), blocks_.stream(config_.layers),
                         p("lnf.weight"), p("lnf.bias"), N, C);
    be.matmul_forward(logits_.f32(), lnf.f32(), p("wte.weight"), nullptr, N, C, V);

    ForwardStats stats = classification_loss(be, logits_.f32(), losses_.f32(), argmax_.i32(),
                                             targets_.i32(), targets, V, pass);
    if (report_aux_loss_) stats.aux_loss = blocks_.auxiliary_loss();
    have_train_forward_ = pass == Pass::Train;
    return stats;
}

void Gpt::backward(Gradients mode) {
    UPCYCLE_ASSERT(have_train_forward_, "backward() needs a preceding Train forward()");
    const int B = batch_, T = config_.context, C = config_.channels;
    const int V = config_.vocab_size;
    const int N = B * T;
    const std::size_t NC = static_cast<std::size_t>(N) * C;
    Backend& be = *backend_;
    if (mode == Gradients::Overwrite) gradients_.set_zero();

    // head (tied to wte): logits_ holds dlogits
    be.zero(dln_.f32(), NC * sizeof(float));
    be.matmul_backward(dln_.f32(), g("wte.weight"), nullptr, logits_.f32(), lnf.f32(),
                       p("wte.weight"), N, C, V);
    be.zero(dresidual_.f32(), NC * sizeof(float));
    be.layernorm_backward(dresidual_.f32(), g("lnf.weight"), g("lnf.bias"), dln_.f32(),
                          blocks_.stream(config_.layers), p("lnf.weight"), lnf_mean.f32(),
                          lnf_rstd.f32(), N, C);
    blocks_.backward(parameters_, gradients_, dresidual_.f32());
    be.embedding_backward(g("wte.weight"), g("wpe.weight"), dresidual_.f32(), inputs_.i32(), B, T,
                          C);
    have_train_forward_ = false;  // dlogits are consumed
}

std::vector<float> Gpt::logits_host() const {
    const std::size_t n = static_cast<std::size_t>(batch_) * config_.context * config_.vocab_size;
    std::vector<float> out(n);
    backend_->download(out.data(), logits_.f32(), n * sizeof(float));
    return out;
}

}  // namespace upcycle
