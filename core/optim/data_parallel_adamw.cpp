#include "core/optim/data_parallel_adamw.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace upcycle {

namespace {
std::size_t shard_size(std::size_t num_parameters, int ranks) {
    const auto n = static_cast<std::size_t>(ranks);
    return (num_parameters + n - 1) / n;
}
}  // namespace

ParameterRange zero_shard(std::size_t num_parameters, int rank, int ranks) {
    const std::size_t size = shard_size(num_parameters, ranks);
    const std::size_t begin = static_cast<std::size_t>(rank) * size;
    return ParameterRange{begin, begin + size};
}

DataParallelAdamW::DataParallelAdamW(Backend& backend, Communicator& ranks,
                                     std::size_t num_parameters, int zero_stage)
    : backend_(&backend),
      ranks_(&ranks),
      num_parameters_(num_parameters),
      sharded_(zero_stage >= 1 && ranks.size() > 1),
      shard_size_(sharded_ ? shard_size(num_parameters, ranks.size()) : num_parameters),
      adamw_(sharded_ ? AdamW(backend, num_parameters,
                              zero_shard(num_parameters, ranks.rank(), ranks.size()))
                      : AdamW(backend, num_parameters)),
      padded_(Tensor::zeros(
          backend, {sharded_ ? static_cast<int64_t>(shard_size_) * ranks.size() : int64_t{0}})),
      shard_gradients_(
          Tensor::zeros(backend, {sharded_ ? static_cast<int64_t>(shard_size_) : int64_t{0}})) {
    UPCYCLE_ASSERT(zero_stage == 0 || zero_stage == 1, "ZeRO stage 0 or 1");
}

OptimizerStepStats DataParallelAdamW::step(Model& model, const TrainConfig& train, double lr,
                                           double gradient_scale) {
    Tensor& gradients = model.gradients();
    if (!sharded_) {
        ranks_->all_reduce_gradients(gradients);  // the optimizer steps on the mean
        return adamw_.update(model.layout(), model.parameters(), gradients, train, lr,
                             gradient_scale);
    }
    const std::size_t n = num_parameters_, S = shard_size_;
    const std::size_t padded = S * static_cast<std::size_t>(ranks_->size());
    float* buffer = padded_.f32();
    // [P] gradients, zero to the padded end, reduce-scattered: this rank's [S] of the mean
    backend_->copy(buffer, gradients.f32(), n * sizeof(float));
    backend_->zero(buffer + n, (padded - n) * sizeof(float));
    ranks_->reduce_scatter(buffer, shard_gradients_.f32(), S, ReduceOp::Average);
    double sum_squares = backend_->sum_squares(shard_gradients_.f32(), S);
    ranks_->all_reduce_host(&sum_squares, 1, ReduceOp::Sum);
    const double grad_norm = std::sqrt(sum_squares) * gradient_scale;
    const OptimizerStepStats stats =
        adamw_.update_shard(model.layout(), model.parameters(), shard_gradients_.f32(), train, lr,
                            gradient_scale, grad_norm);
    // this rank's updated shard into its place of the padded buffer, then everyone's
    const ParameterRange shard = adamw_.shard();
    float* parameters = model.parameters().f32();
    if (shard.begin < n) {
        backend_->copy(buffer + shard.begin, parameters + shard.begin,
                       (std::min(shard.end, n) - shard.begin) * sizeof(float));
    }
    ranks_->all_gather(buffer + shard.begin, buffer, S);
    backend_->copy(parameters, buffer, n * sizeof(float));
    return stats;
}

void DataParallelAdamW::save_checkpoint(const std::filesystem::path& path, const RunConfig& config,
                                        Model& model, const TrainingState& state) {
    const bool writer = ranks_->rank() == 0;
    if (!sharded_) {
        if (writer) upcycle::save_checkpoint(path, config, model, &adamw_, state);
    } else {
        // every rank's shard of each moment, gathered into the whole buffer's moments
        AdamW whole(*backend_, num_parameters_);
        whole.set_step(adamw_.step());
        const std::pair<Tensor*, Tensor*> moments[] = {{&adamw_.exp_avg(), &whole.exp_avg()},
                                                       {&adamw_.exp_avg_sq(), &whole.exp_avg_sq()}};
        for (const auto& [shard, all] : moments) {
            ranks_->all_gather(shard->f32(), padded_.f32(), shard_size_);
            backend_->copy(all->f32(), padded_.f32(), num_parameters_ * sizeof(float));
        }
        if (writer) upcycle::save_checkpoint(path, config, model, &whole, state);
    }
    // the others wait for the file: whoever reads it after (a resume, a test) finds it
    if (ranks_->size() > 1) ranks_->barrier();
}

}  // namespace upcycle
