#include "core/model/parameters.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace upcycle {

void LayoutBuilder::add(std::string name, std::vector<int64_t> shape) {
    ParamInfo info;
    info.name = std::move(name);
    info.numel = static_cast<std::size_t>(shape_numel(shape));
    info.is_matrix = shape.size() == 2;
    info.shape = std::move(shape);
    info.offset = offset_;
    offset_ += info.numel;
    layout_.push_back(std::move(info));
}

void LayoutBuilder::add_blocks(const ModelConfig& model) {
    const int64_t C = model.channels;
    const std::vector<int> moe_layers = moe_layer_indices(model);
    for (int l = 0; l < model.layers; ++l) {
        const std::string b = "blocks." + std::to_string(l) + ".";
        add(b + "ln1.weight", {C});
        add(b + "ln1.bias", {C});
        add(b + "attn.qkv.weight", {3 * C, C});
        add(b + "attn.qkv.bias", {3 * C});
        add(b + "attn.proj.weight", {C, C});
        add(b + "attn.proj.bias", {C});
        add(b + "ln2.weight", {C});
        add(b + "ln2.bias", {C});
        if (std::find(moe_layers.begin(), moe_layers.end(), l) != moe_layers.end()) {
            const int64_t E = model.moe.experts;
            add(b + "mlp.router.weight", {E, C});
            for (int64_t e = 0; e < E; ++e) {
                const std::string x = b + "mlp.experts." + std::to_string(e) + ".";
                add(x + "fc.weight", {4 * C, C});
                add(x + "fc.bias", {4 * C});
                add(x + "proj.weight", {C, 4 * C});
                add(x + "proj.bias", {C});
            }
        } else {
            add(b + "mlp.fc.weight", {4 * C, C});
            add(b + "mlp.fc.bias", {4 * C});
            add(b + "mlp.proj.weight", {C, 4 * C});
            add(b + "mlp.proj.bias", {C});
        }
    }
}

ParameterIndex::ParameterIndex(const std::vector<ParamInfo>& layout) : layout_(&layout) {
    for (std::size_t i = 0; i < layout.size(); ++i) index_[layout[i].name] = i;
}

const ParamInfo& ParameterIndex::at(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw UserError("", name, "no such parameter in this model");
    return (*layout_)[it->second];
}

std::vector<float> init_parameters(const std::vector<ParamInfo>& layout, int layers, uint64_t seed,
                                   const std::vector<std::string>& extra_normal) {
    Rng rng(seed);
    const std::size_t total = layout.empty() ? 0 : layout.back().offset + layout.back().numel;
    std::vector<float> host(total, 0.0f);
    const float std_base = 0.02f;
    const float std_residual = std_base / std::sqrt(2.0f * static_cast<float>(layers));
    auto ends_with = [](const std::string& s, const std::string& suffix) {
        return s.size() >= suffix.size() &&
               s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    for (const auto& info : layout) {
        float* dst = host.data() + info.offset;
        const bool normal = info.is_matrix || std::find(extra_normal.begin(), extra_normal.end(),
                                                        info.name) != extra_normal.end();
        if (normal) {
            // projections back into the residual stream: attention, MLP and every expert's
            const bool residual_out = ends_with(info.name, "attn.proj.weight") ||
                                      ends_with(info.name, "mlp.proj.weight") ||
                                      (info.name.find(".mlp.experts.") != std::string::npos &&
                                       ends_with(info.name, ".proj.weight"));
            const float std = residual_out ? std_residual : std_base;
            for (std::size_t i = 0; i < info.numel; ++i) dst[i] = std * rng.normal();
        } else if (ends_with(info.name, "ln1.weight") || ends_with(info.name, "ln2.weight") ||
                   info.name == "lnf.weight") {
            std::fill(dst, dst + info.numel, 1.0f);  // LayerNorm gains
        }                                            // biases stay zero
    }
    return host;
}

}  // namespace upcycle
