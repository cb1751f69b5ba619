#include "core/surgery/checkpoint_edit.h"

#include <cmath>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/tensor.h"

namespace upcycle::surgery {

void require_dense(const Checkpoint& source, const std::string& method) {
    if (source.config.model.moe.experts != 0) {
        throw UserError(source.path.string(), "model.moe.experts",
                        method + " needs a dense checkpoint, but this one is already a "
                                 "Mixture-of-Experts model with " +
                            std::to_string(source.config.model.moe.experts) + " experts");
    }
}

void require_one_of(const std::string& value, const std::vector<std::string>& allowed,
                    const std::string& key) {
    for (const auto& a : allowed) {
        if (value == a) return;
    }
    std::string list;
    for (std::size_t i = 0; i < allowed.size(); ++i) {
        list += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
    }
    throw UserError("", key, "expected " + list + ", found '" + value + "'");
}

const HostTensor& source_tensor(const Checkpoint& source, const std::string& name,
                                const std::vector<int64_t>& shape) {
    const auto it = source.file.tensors.find(name);
    if (it == source.file.tensors.end()) {
        throw UserError(source.path.string(), name, "tensor missing from the checkpoint");
    }
    if (it->second.shape != shape ||
        static_cast<int64_t>(it->second.data.size()) != shape_numel(shape)) {
        throw UserError(source.path.string(), name,
                        "expected shape " + shape_string(shape) + ", found " +
                            shape_string(it->second.shape));
    }
    return it->second;
}

SafetensorsFile assemble_file(const std::vector<ParamInfo>& layout, SurgeryTensors tensors,
                              bool with_optimizer) {
    SafetensorsFile file;
    auto take = [&](std::map<std::string, HostTensor>& from, const ParamInfo& info,
                    const std::string& prefix) {
        auto it = from.find(info.name);
        UPCYCLE_ASSERT(it != from.end(), "surgery produced no tensor " + prefix + info.name);
        UPCYCLE_ASSERT(it->second.shape == info.shape &&
                           it->second.data.size() == info.numel,
                       "surgery produced a mis-shaped " + prefix + info.name);
        file.order.push_back(prefix + info.name);
        file.tensors[prefix + info.name] = std::move(it->second);
        from.erase(it);
    };
    for (const auto& info : layout) take(tensors.weights, info, "");
    UPCYCLE_ASSERT(tensors.weights.empty(), "surgery produced a tensor the layout does not have");
    if (with_optimizer) {
        for (const auto& info : layout) {
            take(tensors.exp_avg, info, kOptimizerExpAvgPrefix);
            take(tensors.exp_avg_sq, info, kOptimizerExpAvgSqPrefix);
        }
    }
    return file;
}

void finish_metadata(Checkpoint& result, const Checkpoint& source, const nlohmann::json& surgery) {
    result.metadata = source.metadata;
    auto& m = result.metadata;
    const auto& s = result.state.data_rng;
    m["upcycle.surgery"] = surgery.dump();
    m["upcycle.config"] = to_json(result.config).dump();
    m["upcycle.step"] = std::to_string(result.state.step);
    m["upcycle.rng.data"] = fmt::format("{:016x} {:016x} {:016x} {:016x}", s[0], s[1], s[2], s[3]);
    m["upcycle.tokens"] = std::to_string(result.state.tokens);
    m["upcycle.flops"] = fmt::format("{:.17g}", result.state.flops);
    m["upcycle.seconds"] = fmt::format("{:.17g}", result.state.seconds);
    if (result.has_optimizer) {
        m["upcycle.optimizer_step"] = std::to_string(result.optimizer_step);
    } else {
        m.erase("upcycle.optimizer_step");
    }
    result.file.metadata = m;
}

Moments tensor_moments(const std::vector<float>& values) {
    Moments out;
    if (values.empty()) return out;
    double sum = 0;
    for (float v : values) sum += v;
    out.mean = sum / static_cast<double>(values.size());
    double squares = 0;
    for (float v : values) squares += (v - out.mean) * (v - out.mean);
    out.std = std::sqrt(squares / static_cast<double>(values.size()));
    return out;
}

int64_t weight_count(const SafetensorsFile& file) {
    int64_t total = 0;
    for (const auto& name : file.order) {
        if (name.rfind("optimizer.", 0) != 0) total += shape_numel(file.tensors.at(name).shape);
    }
    return total;
}

}  // namespace upcycle::surgery
