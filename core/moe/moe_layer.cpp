#include "core/moe/moe_layer.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "core/errors.h"

namespace upcycle {

const char* moe_phase_name(MoePhase phase) {
    switch (phase) {
        case MoePhase::RouterForward: return "router forward";
        case MoePhase::DispatchForward: return "dispatch forward";
        case MoePhase::ExpertsForward: return "experts forward";
        case MoePhase::CombineForward: return "combine forward";
        case MoePhase::CombineBackward: return "combine backward";
        case MoePhase::ExpertsBackward: return "experts backward";
        case MoePhase::DispatchBackward: return "dispatch backward";
        case MoePhase::RouterBackward: return "router backward";
        case MoePhase::Count: break;
    }
    return "?";
}

namespace {
std::size_t expert_parameters(int C) {  // fc [4C,C] + [4C], proj [C,4C] + [C]
    return 8 * static_cast<std::size_t>(C) * C + 5 * static_cast<std::size_t>(C);
}
}  // namespace

std::size_t moe_layer_parameters(int E, int C) {
    return static_cast<std::size_t>(E) * C + E * expert_parameters(C);
}

MoeTensors moe_tensors_in(float* flat, int E, int C) {
    const std::size_t fc_w = 4 * static_cast<std::size_t>(C) * C,
                      fc_b = 4 * static_cast<std::size_t>(C);
    MoeTensors t;
    t.router = flat;
    float* e0 = flat + static_cast<std::size_t>(E) * C;  // expert 0's; the next one's a stride on
    t.experts = {e0, e0 + fc_w, e0 + fc_w + fc_b, e0 + 2 * fc_w + fc_b, expert_parameters(C)};
    return t;
}

namespace {
// Adds the seconds since the previous lap to a phase's total; does nothing without totals.
class PhaseClock {
public:
    PhaseClock(Backend& backend, MoePhaseSeconds* totals) : backend_(&backend), totals_(totals) {
        if (totals_) start();
    }
    void lap(MoePhase phase) {
        if (!totals_) return;
        const auto started = last_;
        start();
        (*totals_)[static_cast<std::size_t>(phase)] +=
            std::chrono::duration<double>(last_ - started).count();
    }

private:
    void start() {
        backend_->synchronize();
        last_ = std::chrono::steady_clock::now();
    }
    Backend* backend_;
    MoePhaseSeconds* totals_;
    std::chrono::steady_clock::time_point last_;
};
}  // namespace

MoeLayer::MoeLayer(Backend& backend, const ModelConfig& model, int max_tokens, bool pad_rows,
                   std::unique_ptr<TokenDispatcher> dispatcher)
    : backend_(&backend),
      dispatcher_(dispatcher ? std::move(dispatcher)
                             : std::make_unique<LocalTokenDispatcher>(backend)),
      moe_(model.moe),
      C_(model.channels),
      max_tokens_(max_tokens),
      pad_rows_(pad_rows) {
    UPCYCLE_ASSERT(moe_.experts > 0, "an MoE layer needs experts");
    // rows and slots grow with N: the most over the train and eval capacity factors
    const MoeRouting train = routing_rule(moe_, max_tokens, moe_.capacity_factor, pad_rows);
    const MoeRouting eval = routing_rule(moe_, max_tokens, moe_.eval_capacity_factor, pad_rows);
    const int64_t N = max_tokens, E = moe_.experts, S = train.slots();
    const int64_t R = std::max(train.rows(), eval.rows());
    buffers_ = RoutingBuffers(backend, max_tokens, moe_.experts, static_cast<int>(S), R);
    logits_ = Tensor(backend, {N, E});
    dlogits_ = Tensor(backend, {N, E});
    dslot_weight_ = Tensor(backend, {N, S});
    reserve_expert_rows(R);
}

void MoeLayer::reserve_expert_rows(int64_t rows) {
    if (rows <= expert_rows_reserved_) return;
    Backend& be = *backend_;
    const int64_t C = C_;
    xin_ = Tensor(be, {rows, C});
    yout_ = Tensor(be, {rows, C});
    dxin_ = Tensor(be, {rows, C});
    dyout_ = Tensor(be, {rows, C});
    hidden_ = Tensor(be, {rows, 4 * C});
    hidden_gelu_ = Tensor(be, {rows, 4 * C});
    dhidden_ = Tensor(be, {rows, 4 * C});
    dhidden_gelu_ = Tensor(be, {rows, 4 * C});
    expert_rows_reserved_ = rows;
}

void MoeLayer::forward(float* out, const float* x, int N, const MoeTensors& w,
                       double capacity_factor) {
    UPCYCLE_ASSERT(N > 0 && N <= max_tokens_, "more tokens than the MoE layer was built for");
    Backend& be = *backend_;
    const int E = moe_.experts, C = C_;
    routing_ = buffers_.bind(routing_rule(moe_, N, capacity_factor, pad_rows_));
    stats_.reset();

    PhaseClock clock(be, phase_seconds_);
    be.matmul_forward(logits_.f32(), x, w.router, nullptr, N, C, E);
    be.moe_route(routing_, logits_.f32());
    clock.lap(MoePhase::RouterForward);
    shard_ = dispatcher_->plan(routing_);
    reserve_expert_rows(shard_.groups.rows);
    dispatcher_->dispatch(xin_.f32(), x, routing_, C);
    clock.lap(MoePhase::DispatchForward);
    experts_forward(be, w.experts.from_expert(shard_.first_expert), shard_.groups, xin_.f32(),
                    {hidden_.f32(), hidden_gelu_.f32()}, yout_.f32(), C);
    clock.lap(MoePhase::ExpertsForward);
    dispatcher_->combine(out, yout_.f32(), routing_, C);
    clock.lap(MoePhase::CombineForward);
}

void MoeLayer::backward(float* dx, const float* dout, const float* x, const MoeTensors& w,
                        const MoeTensors& grad) {
    Backend& be = *backend_;
    const MoeRouting& r = routing_;
    const int N = r.N, E = r.E, S = r.slots(), C = C_;
    const std::size_t rows_c = static_cast<std::size_t>(shard_.groups.rows) * C;
    PhaseClock clock(be, phase_seconds_);
    // combine → rows' and weights' gradients (padding rows stay zero, as the experts need)
    be.zero(dyout_.f32(), rows_c * sizeof(float));
    be.zero(dslot_weight_.f32(), static_cast<std::size_t>(N) * S * sizeof(float));
    dispatcher_->combine_backward(dyout_.f32(), dslot_weight_.f32(), dout, yout_.f32(), r, C);
    clock.lap(MoePhase::CombineBackward);
    be.zero(dxin_.f32(), rows_c * sizeof(float));
    // this process's experts only: another rank's experts keep a zero gradient here
    experts_backward(be, w.experts.from_expert(shard_.first_expert),
                     grad.experts.from_expert(shard_.first_expert), shard_.groups, xin_.f32(),
                     {hidden_.f32(), hidden_gelu_.f32()}, dyout_.f32(), dxin_.f32(),
                     dhidden_gelu_.f32(), dhidden_.f32(), C);
    clock.lap(MoePhase::ExpertsBackward);
    dispatcher_->dispatch_backward(dx, dxin_.f32(), r, C);
    clock.lap(MoePhase::DispatchBackward);
    // router: combine-weight gradients + auxiliary losses → logits → router weight and x
    be.moe_route_backward(dlogits_.f32(), dslot_weight_.f32(), r);
    be.matmul_backward(dx, grad.router, nullptr, dlogits_.f32(), x, w.router, N, C, E);
    clock.lap(MoePhase::RouterBackward);
}

const RoutingStats& MoeLayer::stats() const {
    if (!stats_) {
        const int E = routing_.E;
        std::vector<int32_t> counts(static_cast<std::size_t>(E));
        std::vector<double> sums(static_cast<std::size_t>(kRoutingSums + E)), load(counts.size());
        backend_->download(counts.data(), routing_.expert_count, counts.size() * sizeof(int32_t));
        backend_->download(sums.data(), routing_.statistics, sums.size() * sizeof(double));
        backend_->download(load.data(), routing_.load_fraction, load.size() * sizeof(double));
        stats_ = routing_stats(routing_, counts.data(), sums.data(), load.data());
    }
    return *stats_;
}

double MoeLayer::auxiliary_loss() const {
    return moe_.aux_loss_coef * stats().aux_loss + moe_.z_loss_coef * stats().z_loss;
}

}  // namespace upcycle
