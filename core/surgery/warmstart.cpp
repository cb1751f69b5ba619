#include "core/surgery/warmstart.h"

#include <climits>

#include "core/errors.h"
#include "core/model/model.h"
#include "core/surgery/checkpoint_edit.h"

namespace upcycle {

std::vector<int> warmstart_source_blocks(int layers, int depth_multiplier, const std::string& tiling) {
    std::vector<int> source;
    for (int j = 0; j < layers * depth_multiplier; ++j) {
        source.push_back(tiling == "stack" ? j % layers : j / depth_multiplier);
    }
    return source;
}

Checkpoint warmstart_checkpoint(const Checkpoint& dense, int depth_multiplier,
                                const std::string& tiling, const std::string& optimizer_state) {
    surgery::require_dense(dense, "warm starting");
    const int L = dense.config.model.layers;
    if (depth_multiplier < 2 || depth_multiplier > INT_MAX / L) {
        throw UserError("", "depth_multiplier",
                        "expected an integer ≥ 2 (the deeper model has depth_multiplier × " +
                            std::to_string(L) + " blocks), found " + std::to_string(depth_multiplier));
    }
    surgery::require_one_of(tiling, {"stack", "interleave"}, "tiling");
    surgery::require_one_of(optimizer_state, {"reset", "copy"}, "optimizer_state");
    const bool copy_optimizer = optimizer_state == "copy";
    if (copy_optimizer && !dense.has_optimizer) {
        throw UserError(dense.path.string(), "optimizer_state",
                        "copy needs the dense checkpoint's optimizer moments, and it has none "
                        "(use reset)");
    }

    Checkpoint out;
    out.config = dense.config;
    out.config.model.layers = L * depth_multiplier;
    validate(out.config, "");
    const std::vector<int> source_blocks = warmstart_source_blocks(L, depth_multiplier, tiling);
    const auto layout = parameter_layout(out.config.model);

    // "blocks.{j}.rest" → "blocks.{source_blocks[j]}.rest"; other names are their own source
    auto source_name = [&](const std::string& name) {
        const std::string prefix = "blocks.";
        if (name.rfind(prefix, 0) != 0) return name;
        const std::size_t dot = name.find('.', prefix.size());
        const int j = std::stoi(name.substr(prefix.size(), dot - prefix.size()));
        return prefix + std::to_string(source_blocks.at(static_cast<std::size_t>(j))) + name.substr(dot);
    };
    surgery::SurgeryTensors t;
    for (const auto& info : layout) {
        const std::string from = source_name(info.name);
        t.weights[info.name] = surgery::source_tensor(dense, from, info.shape);
        if (copy_optimizer) {
            t.exp_avg[info.name] = surgery::source_tensor(dense, kOptimizerExpAvgPrefix + from, info.shape);
            t.exp_avg_sq[info.name] =
                surgery::source_tensor(dense, kOptimizerExpAvgSqPrefix + from, info.shape);
        }
    }

    out.state = dense.state;
    out.has_optimizer = copy_optimizer;
    out.optimizer_step = copy_optimizer ? dense.optimizer_step : 0;
    out.file = surgery::assemble_file(layout, std::move(t), copy_optimizer);
    const nlohmann::json record = {
        {"method", "warmstart"},
        {"source", {{"step", dense.state.step}, {"parameters", surgery::weight_count(dense.file)},
                    {"layers", L}}},
        {"parameters", surgery::weight_count(out.file)},
        {"layers", out.config.model.layers},
        {"depth_multiplier", depth_multiplier},
        {"tiling", tiling},
        {"source_blocks", source_blocks},
        {"optimizer_state", optimizer_state},
    };
    surgery::finish_metadata(out, dense, record);
    return out;
}

}  // namespace upcycle
