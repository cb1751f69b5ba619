#include "core/model/transformer_model.h"

#include "core/errors.h"

namespace upcycle {

TransformerModel::TransformerModel(Backend& backend, const ModelConfig& config, int max_batch,
                                   std::vector<ParamInfo> layout, int T, bool causal,
                                   Communicator* expert_parallel)
    : backend_(&backend),
      config_(config),
      max_batch_(max_batch),
      layout_(std::move(layout)),
      index_(layout_),
      num_parameters_(layout_.back().offset + layout_.back().numel),
      parameters_(Tensor::zeros(backend, {static_cast<int64_t>(num_parameters_)})),
      gradients_(Tensor::zeros(backend, {static_cast<int64_t>(num_parameters_)})),
      blocks_(backend, config, index_, max_batch, T, causal, expert_parallel) {
    UPCYCLE_ASSERT(max_batch > 0, "max_batch must be positive");
    UPCYCLE_ASSERT(config.channels % config.heads == 0, "channels must divide into heads");
}

}  // namespace upcycle
