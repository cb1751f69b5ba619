#include "core/eval_chunks.h"

namespace upcycle {

std::vector<ForwardStats> evaluate_chunks(Communicator& ranks, int64_t chunks,
                                          const EvaluateChunk& evaluate_chunk) {
    std::vector<ForwardStats> stats(static_cast<std::size_t>(chunks));
    const int n = ranks.size();
    if (n == 1) {
        for (int64_t c = 0; c < chunks; ++c)
            stats[static_cast<std::size_t>(c)] = evaluate_chunk(c, true);
        return stats;
    }
    // [chunks][3]: loss_sum, correct, tokens; zero where another rank evaluates the chunk
    constexpr std::size_t kFields = 3;
    std::vector<double> sums(static_cast<std::size_t>(chunks) * kFields, 0.0);
    const int64_t rounds = (chunks + n - 1) / n;
    for (int64_t round = 0; round < rounds; ++round) {
        const int64_t c = round * n + ranks.rank();
        if (c >= chunks) {
            evaluate_chunk(chunks - 1, false);
            continue;
        }
        const ForwardStats s = evaluate_chunk(c, true);
        double* row = sums.data() + static_cast<std::size_t>(c) * kFields;
        row[0] = s.loss_sum;
        row[1] = static_cast<double>(s.correct);  // counts: exact in double
        row[2] = static_cast<double>(s.tokens);
    }
    ranks.all_reduce_host(sums.data(), sums.size(), ReduceOp::Sum);
    for (int64_t c = 0; c < chunks; ++c) {
        const double* row = sums.data() + static_cast<std::size_t>(c) * kFields;
        ForwardStats& s = stats[static_cast<std::size_t>(c)];
        s.loss_sum = row[0];
        s.correct = static_cast<int64_t>(row[1]);
        s.tokens = static_cast<int64_t>(row[2]);
    }
    return stats;
}

}  // namespace upcycle
