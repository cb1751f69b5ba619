#include "core/moe/moe_layer.h"

#include <algorithm>

#include "core/errors.h"

namespace upcycle {

namespace {
// The most rows routing can produce for N tokens, over the train and eval capacity factors.
int64_t max_rows_for(const MoeConfig& moe, int64_t N) {
    if (moe.router == "topk") return N * moe.k;
    const int64_t cap = std::max(expert_capacity(moe, N, moe.capacity_factor),
                                 expert_capacity(moe, N, moe.eval_capacity_factor));
    return cap * moe.experts;
}
}  // namespace

MoeLayer::MoeLayer(Backend& backend, const ModelConfig& model, int max_tokens)
    : backend_(&backend), moe_(model.moe), C_(model.channels), max_tokens_(max_tokens) {
    UPCYCLE_ASSERT(moe_.experts > 0, "an MoE layer needs experts");
    const int64_t N = max_tokens, E = moe_.experts, C = C_;
    max_rows_ = max_rows_for(moe_, N);
    const int64_t R = max_rows_;
    logits_ = Tensor(backend, {N, E});
    dlogits_ = Tensor(backend, {N, E});
    row_token_ = Tensor(backend, {R}, DType::I32);
    token_offsets_ = Tensor(backend, {N + 1}, DType::I32);
    token_rows_ = Tensor(backend, {R}, DType::I32);
    weights_ = Tensor(backend, {R});
    dweights_ = Tensor(backend, {R});
    xin_ = Tensor(backend, {R, C});
    yout_ = Tensor(backend, {R, C});
    dxin_ = Tensor(backend, {R, C});
    dyout_ = Tensor(backend, {R, C});
    hidden_ = Tensor(backend, {R, 4 * C});
    hidden_gelu_ = Tensor(backend, {R, 4 * C});
    dhidden_ = Tensor(backend, {R, 4 * C});
    dhidden_gelu_ = Tensor(backend, {R, 4 * C});
}

void MoeLayer::forward(float* out, const float* x, int N, const MoeTensors& w,
                       double capacity_factor) {
    UPCYCLE_ASSERT(N > 0 && N <= max_tokens_, "more tokens than the MoE layer was built for");
    Backend& be = *backend_;
    const int E = moe_.experts, C = C_;
    N_ = N;
    // route (the [N,E] logits are small; the decision is made on the host)
    be.matmul_forward(logits_.f32(), x, w.router, nullptr, N, C, E);
    std::vector<float> logits(static_cast<std::size_t>(N) * E);
    be.download(logits.data(), logits_.f32(), logits.size() * sizeof(float));
    decision_ = route(moe_, logits, N, capacity_factor);
    plan_ = plan_dispatch(decision_.assignments, N, E);
    const int R = plan_.rows();
    UPCYCLE_ASSERT(R <= max_rows_, "routing produced more rows than allocated");
    be.upload(row_token_.i32(), plan_.row_token.data(), R * sizeof(int32_t));
    be.upload(token_offsets_.i32(), plan_.token_offsets.data(), (N + 1) * sizeof(int32_t));
    be.upload(token_rows_.i32(), plan_.token_rows.data(), R * sizeof(int32_t));
    be.upload(weights_.f32(), plan_.weights.data(), R * sizeof(float));
    // dispatch → experts → combine
    be.gather_rows(xin_.f32(), x, row_token_.i32(), R, C);
    experts_forward(be, w.experts, plan_.expert_offsets, xin_.f32(),
                    {hidden_.f32(), hidden_gelu_.f32()}, yout_.f32(), C);
    const DeviceDispatch d{row_token_.i32(), token_offsets_.i32(), token_rows_.i32(), weights_.f32(), N, R};
    combine_forward(be, d, yout_.f32(), out, C);
}

void MoeLayer::backward(float* dx, const float* dout, const float* x, const MoeTensors& w,
                        MoeTensors& grad) {
    Backend& be = *backend_;
    const int N = N_, E = moe_.experts, C = C_;
    const int R = plan_.rows();
    const DeviceDispatch d{row_token_.i32(), token_offsets_.i32(), token_rows_.i32(), weights_.f32(), N, R};
    combine_backward(be, d, dout, yout_.f32(), dyout_.f32(), dweights_.f32(), C);
    be.zero(dxin_.f32(), static_cast<std::size_t>(R) * C * sizeof(float));
    experts_backward(be, w.experts, grad.experts, plan_.expert_offsets, xin_.f32(),
                     {hidden_.f32(), hidden_gelu_.f32()}, dyout_.f32(), dxin_.f32(),
                     dhidden_gelu_.f32(), dhidden_.f32(), C);
    be.gather_rows_backward(dx, dxin_.f32(), token_offsets_.i32(), token_rows_.i32(), N, C);
    // router: combine-weight gradients + auxiliary losses → logits → router weight and x
    std::vector<float> dweights(static_cast<std::size_t>(R));
    be.download(dweights.data(), dweights_.f32(), R * sizeof(float));
    const auto dlogits = router_logits_gradient(moe_, decision_, dweights, N);
    be.upload(dlogits_.f32(), dlogits.data(), dlogits.size() * sizeof(float));
    be.matmul_backward(dx, grad.router, nullptr, dlogits_.f32(), x, w.router, N, C, E);
}

double MoeLayer::auxiliary_loss() const {
    return moe_.aux_loss_coef * decision_.stats.aux_loss + moe_.z_loss_coef * decision_.stats.z_loss;
}

}  // namespace upcycle
