#pragma once
// What the GPT and the ViT have in common beyond the Model interface: the flat parameter and
// gradient buffers in a named layout, the shared transformer block stack, and the accessors
// over them. Each subclass adds its input embedding, its head and its own forward.
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model/blocks.h"
#include "core/model/model.h"
#include "core/model/parameters.h"
#include "core/tensor.h"

namespace upcycle {

class TransformerModel : public Model {
public:
    const ModelConfig& config() const override { return config_; }
    Backend& backend() const override { return *backend_; }
    int max_batch() const override { return max_batch_; }
    const std::vector<ParamInfo>& layout() const override { return layout_; }
    const ParamInfo& param_info(const std::string& name) const { return index_.at(name); }
    std::size_t num_parameters() const override { return num_parameters_; }
    Tensor& parameters() override { return parameters_; }
    Tensor& gradients() override { return gradients_; }

    // Blocks whose MLP is an MoE layer, and their routing statistics from the last forward
    // (same order).
    const std::vector<int>& moe_layers() const override { return blocks_.moe_layers(); }
    std::vector<RoutingStats> routing_stats() const override { return blocks_.routing_stats(); }
    // The MoE layer of block l (null for a dense block), for tests and tools.
    const MoeLayer* moe_layer(int l) const { return blocks_.moe_layer(l); }
    void report_auxiliary_loss(bool on) override { report_aux_loss_ = on; }

protected:
    // Zeroed parameters and gradients in `layout`, and blocks for batches of up to max_batch
    // sequences of T tokens (causal: the GPT's masked attention; expert_parallel: as
    // TransformerBlocks).
    TransformerModel(Backend& backend, const ModelConfig& config, int max_batch,
                     std::vector<ParamInfo> layout, int T, bool causal,
                     Communicator* expert_parallel);

    // A parameter's (or its gradient's) first float, by name.
    const float* p(const std::string& name) const {
        return parameters_.f32() + index_.at(name).offset;
    }
    float* g(const std::string& name) { return gradients_.f32() + index_.at(name).offset; }

    Backend* backend_;
    ModelConfig config_;
    int max_batch_;
    std::vector<ParamInfo> layout_;
    ParameterIndex index_;
    std::size_t num_parameters_ = 0;
    Tensor parameters_, gradients_;
    TransformerBlocks blocks_;
    bool report_aux_loss_ = true;
};

}  // namespace upcycle
