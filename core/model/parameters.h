#pragma once
// A model's parameters as one flat buffer: the layout (names, shapes and offsets, in buffer
// order — the checkpoint's names and PyTorch nn.Linear shapes), a name → parameter index, and
// the deterministic initialisation. The GPT, the ViT, checkpoints and surgery share them.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/config.h"

namespace upcycle {

struct ParamInfo {
    std::string name;            // e.g. "blocks.0.attn.qkv.weight"
    std::vector<int64_t> shape;  // e.g. [3C, C]
    std::size_t offset = 0;      // into the flat buffer, in floats
    std::size_t numel = 0;
    bool is_matrix = false;  // 2-D: gets weight decay and normal init
};

// Builds a parameter layout: names, shapes and offsets into one flat buffer, in order.
class LayoutBuilder {
public:
    void add(std::string name, std::vector<int64_t> shape);
    // blocks.{0..L-1}.*: ln1, attn.qkv, attn.proj, ln2, then mlp.fc/mlp.proj or, in MoE
    // blocks, mlp.router and mlp.experts.{e}.fc/proj.
    void add_blocks(const ModelConfig& model);
    std::vector<ParamInfo> take() { return std::move(layout_); }

private:
    std::vector<ParamInfo> layout_;
    std::size_t offset_ = 0;
};

// Name → parameter lookup over a layout.
class ParameterIndex {
public:
    explicit ParameterIndex(const std::vector<ParamInfo>& layout);
    const ParamInfo& at(const std::string& name) const;  // UserError if there is none

private:
    const std::vector<ParamInfo>* layout_;
    std::unordered_map<std::string, std::size_t> index_;
};

// Normal(0, 0.02) for matrices (and for the vectors named in extra_normal, e.g. a class
// token), the residual output projections (attn.proj, mlp.proj, every expert's proj) scaled
// by 1/sqrt(2·layers), LayerNorm gains 1, everything else 0. Deterministic for a seed.
std::vector<float> init_parameters(const std::vector<ParamInfo>& layout, int layers, uint64_t seed,
                                   const std::vector<std::string>& extra_normal = {});

}  // namespace upcycle
