#pragma once
// Dispatch plan: a stable counting sort of the kept (token, expert) assignments by expert,
// so each expert's rows are contiguous (and in token order within the expert), plus the
// token-major index that the combine and the dispatch backward walk.
#include <cstdint>
#include <vector>

#include "core/moe/router.h"

namespace upcycle {

struct DispatchPlan {
    std::vector<int32_t> expert_offsets;  // [E+1]: expert e owns rows [off[e], off[e+1])
    std::vector<int32_t> row_token;       // [R]: the token each row carries
    std::vector<int32_t> token_offsets;   // [N+1]: token n's assignments, token-major
    std::vector<int32_t> token_rows;      // [R]: the row of each assignment (token-major order)
    std::vector<float> weights;           // [R]: combine weight of each assignment (token-major)
    int rows() const { return static_cast<int>(row_token.size()); }
};

// assignments must be in token-major order (as route() returns them).
DispatchPlan plan_dispatch(const std::vector<Assignment>& assignments, int N, int E);

}  // namespace upcycle
