#include "core/parallel/communication_plan.h"

#include <fmt/format.h>

#include "core/errors.h"
#include "core/flops.h"
#include "core/model/model.h"

namespace upcycle {

namespace {

constexpr double kFloatBytes = 4;  // gradients and routed rows travel as float32

void require_divides(int divisor, int value, const char* key, const std::string& what) {
    if (divisor < 1 || value % divisor != 0) {
        throw UserError("", key,
                        fmt::format("expected a positive divisor of {}, found {}", what, divisor));
    }
}

}  // namespace

CommunicationPlan plan_communication(const CommunicationPlanInput& in) {
    const int N = in.ranks;
    const int M = in.expert_parallel;
    if (N < 1) throw UserError("", "--ranks", fmt::format("expected at least 1 rank, found {}", N));
    require_divides(M, N, "--ep", fmt::format("the ranks ({})", N));
    require_divides(N, in.global_batch, "--ranks", fmt::format("the batch ({})", in.global_batch));
    const bool moe = in.model.moe.experts > 0;
    if (moe) {
        require_divides(M, in.model.moe.experts, "--ep",
                        fmt::format("the experts ({})", in.model.moe.experts));
    } else if (M != 1) {
        throw UserError("", "--ep", "a dense model has no experts to spread: expected --ep 1");
    }

    CommunicationPlan plan;
    plan.parameters = parameter_count(in.model);
    plan.examples_per_rank = in.global_batch / N;
    const int micro = in.micro_batch > 0 ? in.micro_batch : plan.examples_per_rank;
    require_divides(micro, plan.examples_per_rank, "--micro-batch",
                    fmt::format("the examples per rank ({})", plan.examples_per_rank));
    plan.passes_per_step = plan.examples_per_rank / micro;
    plan.moe_layers = moe ? static_cast<int>(moe_layer_indices(in.model).size()) : 0;

    const double T = tokens_per_example(in.model);
    const double rank_tokens = plan.examples_per_rank * T;
    plan.compute_seconds =
        flops_per_token(in.model).training * rank_tokens / in.compute_flops_per_second;

    const double P = static_cast<double>(plan.parameters);
    for (const ParamInfo& param : parameter_layout(in.model)) {
        if (param.name.find(".experts.") != std::string::npos) {
            plan.expert_parameters += static_cast<int64_t>(param.numel);
        }
    }
    // A ring all-reduce over n ranks sends 2·(n−1)/n of the buffer per rank.
    auto ring = [](double n, double floats) {
        return n > 1 ? 2.0 * (n - 1) / n * floats * kFloatBytes : 0.0;
    };
    const double P_experts = static_cast<double>(plan.expert_parameters);
    plan.all_reduce_bytes = ring(N, P);
    plan.sharded_all_reduce_bytes =
        ring(N, P - P_experts) + ring(static_cast<double>(N) / M, P_experts / M);
    if (moe && M > 1) {
        const double slots_per_token = active_experts_per_token(in.model.moe);
        const double rows_per_pass = micro * T * slots_per_token;
        const double off_rank = static_cast<double>(M - 1) / M;
        constexpr double kAllToAllsPerLayer = 4;  // dispatch, combine; forward and backward
        plan.all_to_all_bytes = kAllToAllsPerLayer * plan.moe_layers * plan.passes_per_step *
                                rows_per_pass * off_rank * in.model.channels * kFloatBytes;
    }
    plan.all_reduce_seconds = plan.all_reduce_bytes / in.link_bytes_per_second;
    plan.all_to_all_seconds = plan.all_to_all_bytes / in.link_bytes_per_second;
    return plan;
}

}  // namespace upcycle
