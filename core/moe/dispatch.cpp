#include "core/moe/dispatch.h"

#include "core/errors.h"

namespace upcycle {

DispatchPlan plan_dispatch(const std::vector<Assignment>& assignments, int N, int E) {
    DispatchPlan plan;
    const auto R = static_cast<int32_t>(assignments.size());
    plan.expert_offsets.assign(static_cast<std::size_t>(E) + 1, 0);
    plan.token_offsets.assign(static_cast<std::size_t>(N) + 1, 0);
    for (const auto& a : assignments) {
        UPCYCLE_ASSERT(a.expert >= 0 && a.expert < E && a.token >= 0 && a.token < N,
                       "assignment out of range");
        ++plan.expert_offsets[a.expert + 1];
        ++plan.token_offsets[a.token + 1];
    }
    for (int e = 0; e < E; ++e) plan.expert_offsets[e + 1] += plan.expert_offsets[e];
    for (int n = 0; n < N; ++n) plan.token_offsets[n + 1] += plan.token_offsets[n];

    plan.row_token.resize(static_cast<std::size_t>(R));
    plan.token_rows.resize(static_cast<std::size_t>(R));
    plan.weights.resize(static_cast<std::size_t>(R));
    std::vector<int32_t> cursor(plan.expert_offsets.begin(), plan.expert_offsets.end() - 1);
    int32_t previous_token = -1;
    for (int32_t i = 0; i < R; ++i) {
        const auto& a = assignments[i];
        UPCYCLE_ASSERT(a.token >= previous_token, "assignments must be token-major");
        previous_token = a.token;
        const int32_t row = cursor[a.expert]++;
        plan.row_token[row] = a.token;
        plan.token_rows[i] = row;
        plan.weights[i] = a.weight;
    }
    return plan;
}

}  // namespace upcycle
