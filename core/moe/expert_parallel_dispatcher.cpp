#include "core/moe/expert_parallel_dispatcher.h"

#include <numeric>

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

void check_expert_parallel_split(int experts, int ranks, const std::string& source) {
    UPCYCLE_ASSERT(ranks > 0, "a communicator has at least one rank");
    if (experts % ranks == 0) return;
    throw UserError(source, "model.moe.experts",
                    fmt::format("{} experts do not split evenly over the {} ranks of an "
                                "expert-parallel run (train.expert_parallel spreads every MoE "
                                "layer's experts over all ranks): expected a multiple of {}",
                                experts, ranks, ranks));
}

int64_t ExpertParallelPlan::sent() const {
    return std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
}

int64_t ExpertParallelPlan::received() const {
    return std::accumulate(receive_rows.begin(), receive_rows.end(), int64_t{0});
}

namespace {

// Appends a block, merged into the previous one where both ranges continue it.
void append_block(std::vector<RowBlock>& blocks, RowBlock block) {
    if (block.rows == 0) return;
    if (!blocks.empty()) {
        RowBlock& last = blocks.back();
        if (last.from + last.rows == block.from && last.to + last.rows == block.to) {
            last.rows += block.rows;
            return;
        }
    }
    blocks.push_back(block);
}

enum class BlockCopy {
    Forward,        // dst[to] = src[from]
    Inverse,        // dst[from] = src[to]
    ForwardAndAdd,  // dst[to] += src[from]
};

void copy_blocks(Backend& be, float* dst, const float* src, std::span<const RowBlock> blocks, int C,
                 BlockCopy how) {
    for (const RowBlock& b : blocks) {
        const bool inverse = how == BlockCopy::Inverse;
        const std::size_t from = static_cast<std::size_t>(inverse ? b.to : b.from) * C;
        const std::size_t to = static_cast<std::size_t>(inverse ? b.from : b.to) * C;
        const std::size_t n = static_cast<std::size_t>(b.rows) * C;
        if (how == BlockCopy::ForwardAndAdd) {
            be.accumulate(dst + to, src + from, n);
        } else {
            be.copy(dst + to, src + from, n * sizeof(float));
        }
    }
}

}  // namespace

ExpertParallelPlan plan_expert_parallel(std::span<const int64_t> counts, int ranks, int rank,
                                        int rows_per_expert) {
    const int M = ranks;
    UPCYCLE_ASSERT(M > 0 && rank >= 0 && rank < M && counts.size() % M == 0,
                   "expert-parallel counts are [ranks · experts]");
    const int E = static_cast<int>(counts.size() / M);
    UPCYCLE_ASSERT(E % M == 0, "the experts must split evenly over the ranks");
    const int El = E / M;
    auto count = [&](int j, int e) { return counts[static_cast<std::size_t>(j) * E + e]; };
    auto owner = [&](int e) { return e / El; };

    ExpertParallelPlan p;
    p.first_expert = rank * El;
    p.local_experts = El;
    p.send_rows.assign(M, 0);
    p.receive_rows.assign(M, 0);
    for (int e = 0; e < E; ++e) p.send_rows[owner(e)] += count(rank, e);
    for (int j = 0; j < M; ++j) {
        for (int e = 0; e < El; ++e) p.receive_rows[j] += count(j, p.first_expert + e);
    }

    // pack: this rank's kept rows of each expert, from its routing layout to the send order
    int64_t routing_row = 0, send_row = 0;
    for (int e = 0; e < E; ++e) {
        if (rows_per_expert > 0) routing_row = static_cast<int64_t>(e) * rows_per_expert;
        append_block(p.pack, {routing_row, send_row, count(rank, e)});
        routing_row += count(rank, e);
        send_row += count(rank, e);
    }

    // expert order: local expert e's rows are every source's rows for it, in source order
    p.expert_count.assign(El, 0);
    p.expert_offset.assign(El + 1, 0);
    for (int e = 0; e < El; ++e) {
        int64_t rows = 0;
        for (int j = 0; j < M; ++j) rows += count(j, p.first_expert + e);
        p.expert_count[e] = static_cast<int32_t>(rows);
        p.expert_offset[e + 1] = p.expert_offset[e] + p.expert_count[e];
    }
    std::vector<int64_t> next_in_expert(p.expert_offset.begin(), p.expert_offset.end() - 1);
    int64_t receive_row = 0;
    for (int j = 0; j < M; ++j) {
        for (int e = 0; e < El; ++e) {
            const int64_t rows = count(j, p.first_expert + e);
            append_block(p.to_experts, {receive_row, next_in_expert[e], rows});
            receive_row += rows;
            next_in_expert[e] += rows;
        }
    }
    return p;
}

ExpertParallelDispatcher::ExpertParallelDispatcher(Backend& backend, Communicator& ranks,
                                                   int experts)
    : backend_(&backend), ranks_(&ranks), experts_(experts) {
    check_expert_parallel_split(experts, ranks.size());
    const int64_t El = experts / ranks.size();
    expert_offset_ = Tensor(backend, {El + 1}, DType::I32);
    expert_count_ = Tensor(backend, {El}, DType::I32);
}

void ExpertParallelDispatcher::reserve(Tensor& t, int64_t rows, int C) {
    if (t.empty() || t.numel() < rows * C) t = Tensor(*backend_, {rows, C});
}

void ExpertParallelDispatcher::reserve_buffers(const MoeRouting& r, int C) {
    reserve(token_rows_, r.rows(), C);
    reserve(token_row_gradients_, r.rows(), C);
    reserve(send_staging_, plan_.sent(), C);
    reserve(receive_staging_, plan_.received(), C);
}

ExpertShard ExpertParallelDispatcher::plan(const MoeRouting& r) {
    const int E = experts_, M = ranks_->size();
    UPCYCLE_ASSERT(r.E == E, "the routing decision has another number of experts");
    std::vector<int32_t> mine(static_cast<std::size_t>(E));
    backend_->download(mine.data(), r.expert_count, mine.size() * sizeof(int32_t));
    const std::vector<int64_t> mine_wide(mine.begin(), mine.end());
    std::vector<int64_t> counts(static_cast<std::size_t>(M) * E);
    ranks_->all_gather_host(mine_wide.data(), counts.data(), mine_wide.size());
    plan_ = plan_expert_parallel(counts, M, ranks_->rank(), r.rows_per_expert);
    backend_->upload(expert_offset_.i32(), plan_.expert_offset.data(),
                     plan_.expert_offset.size() * sizeof(int32_t));
    backend_->upload(expert_count_.i32(), plan_.expert_count.data(),
                     plan_.expert_count.size() * sizeof(int32_t));
    ExpertGroups groups;
    groups.E = plan_.local_experts;
    groups.rows_per_expert = 0;  // compact: the received rows, no padding
    groups.rows = static_cast<int>(plan_.received());
    groups.offset = expert_offset_.i32();
    groups.count = expert_count_.i32();
    return {plan_.first_expert, groups};
}

void ExpertParallelDispatcher::exchange(bool toward_experts, int C) {
    const int M = ranks_->size();
    std::vector<int64_t> sent(M), received(M);
    for (int j = 0; j < M; ++j) {
        sent[j] = plan_.send_rows[j] * C;
        received[j] = plan_.receive_rows[j] * C;
    }
    if (toward_experts) {
        ranks_->all_to_all_v(send_staging_.f32(), sent, receive_staging_.f32(), received);
    } else {
        ranks_->all_to_all_v(receive_staging_.f32(), received, send_staging_.f32(), sent);
    }
}

void ExpertParallelDispatcher::dispatch(float* rows, const float* x, const MoeRouting& r, int C) {
    reserve_buffers(r, C);
    backend_->gather_rows(token_rows_.f32(), x, r.row_token, r.rows(), C);
    copy_blocks(*backend_, send_staging_.f32(), token_rows_.f32(), plan_.pack, C,
                BlockCopy::Forward);
    exchange(/*toward_experts=*/true, C);
    copy_blocks(*backend_, rows, receive_staging_.f32(), plan_.to_experts, C, BlockCopy::Forward);
}

void ExpertParallelDispatcher::combine(float* out, const float* rows, const MoeRouting& r, int C) {
    reserve_buffers(r, C);
    copy_blocks(*backend_, receive_staging_.f32(), rows, plan_.to_experts, C, BlockCopy::Inverse);
    exchange(/*toward_experts=*/false, C);
    // padding rows of token_rows_ keep the zeros of the gather: no slot reads them
    copy_blocks(*backend_, token_rows_.f32(), send_staging_.f32(), plan_.pack, C,
                BlockCopy::Inverse);
    backend_->combine_rows(out, token_rows_.f32(), r.slot_weight, r.slot_row, r.N, r.slots(), C);
}

void ExpertParallelDispatcher::combine_backward(float* drows, float* dslot_weight,
                                                const float* dout, const float* /*rows*/,
                                                const MoeRouting& r, int C) {
    // where the tokens live: dout and the combine weights are here, and so are the expert
    // outputs combine() brought back
    reserve_buffers(r, C);
    backend_->zero(token_row_gradients_.f32(),
                   static_cast<std::size_t>(r.rows()) * C * sizeof(float));
    backend_->combine_rows_backward(token_row_gradients_.f32(), dslot_weight, dout,
                                    token_rows_.f32(), r.slot_weight, r.slot_row, r.N, r.slots(),
                                    C);
    copy_blocks(*backend_, send_staging_.f32(), token_row_gradients_.f32(), plan_.pack, C,
                BlockCopy::Forward);
    exchange(/*toward_experts=*/true, C);
    copy_blocks(*backend_, drows, receive_staging_.f32(), plan_.to_experts, C,
                BlockCopy::ForwardAndAdd);
}

void ExpertParallelDispatcher::dispatch_backward(float* dx, const float* drows, const MoeRouting& r,
                                                 int C) {
    reserve_buffers(r, C);
    copy_blocks(*backend_, receive_staging_.f32(), drows, plan_.to_experts, C, BlockCopy::Inverse);
    exchange(/*toward_experts=*/false, C);
    copy_blocks(*backend_, token_row_gradients_.f32(), send_staging_.f32(), plan_.pack, C,
                BlockCopy::Inverse);
    backend_->gather_rows_backward(dx, token_row_gradients_.f32(), r.slot_row, r.N, r.slots(), C);
}

std::unique_ptr<TokenDispatcher> make_token_dispatcher(Backend& backend,
                                                       Communicator* expert_parallel, int experts) {
    if (expert_parallel == nullptr || expert_parallel->size() == 1) {
        return std::make_unique<LocalTokenDispatcher>(backend);
    }
    return std::make_unique<ExpertParallelDispatcher>(backend, *expert_parallel, experts);
}

}  // namespace upcycle
