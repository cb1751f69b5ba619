#include "core/surgery/upcycle.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"
#include "core/model/model.h"
#include "core/rng.h"
#include "core/surgery/checkpoint_edit.h"

namespace upcycle {

namespace {

using surgery::Moments;
using surgery::tensor_moments;

// noise and drop draw from this stream of the seed; the router from Rng(seed) itself
constexpr uint64_t kExpertStreamSalt = 0xE4E87C0DE5ULL;

const char* const kMlpTensors[] = {"fc.weight", "fc.bias", "proj.weight", "proj.bias"};

// The dense MLP of one block (and its moments, when the optimizer state is copied).
struct DenseMlp {
    const HostTensor* fc_weight;    // [4C, C]
    const HostTensor* fc_bias;      // [4C]
    const HostTensor* proj_weight;  // [C, 4C]
    const HostTensor* proj_bias;    // [C]
    const HostTensor* by_suffix(const std::string& suffix) const {
        if (suffix == "fc.weight") return fc_weight;
        if (suffix == "fc.bias") return fc_bias;
        if (suffix == "proj.weight") return proj_weight;
        return proj_bias;
    }
};

DenseMlp dense_mlp(const Checkpoint& dense, const std::string& prefix, int64_t C) {
    return {&surgery::source_tensor(dense, prefix + "mlp.fc.weight", {4 * C, C}),
            &surgery::source_tensor(dense, prefix + "mlp.fc.bias", {4 * C}),
            &surgery::source_tensor(dense, prefix + "mlp.proj.weight", {C, 4 * C}),
            &surgery::source_tensor(dense, prefix + "mlp.proj.bias", {C})};
}

// w + σ·std(w)·N(0,1), elementwise; unchanged when std(w) = 0.
HostTensor with_noise(const HostTensor& dense, double sigma, Rng& rng) {
    HostTensor out = dense;
    const Moments m = tensor_moments(dense.data);
    if (m.std == 0 || sigma == 0) return out;
    const auto scale = static_cast<float>(sigma * m.std);
    for (float& v : out.data) v += scale * rng.normal();
    return out;
}

// k distinct indices in [0, n), chosen uniformly (partial Fisher–Yates), sorted.
std::vector<int64_t> choose_neurons(int64_t n, int64_t k, Rng& rng) {
    std::vector<int64_t> index(static_cast<std::size_t>(n));
    std::iota(index.begin(), index.end(), int64_t{0});
    for (int64_t i = 0; i < k; ++i) {
        const auto j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
        std::swap(index[static_cast<std::size_t>(i)], index[static_cast<std::size_t>(j)]);
    }
    index.resize(static_cast<std::size_t>(k));
    std::sort(index.begin(), index.end());
    return index;
}

float draw(const Moments& m, Rng& rng) {
    return static_cast<float>(m.mean + m.std * static_cast<double>(rng.normal()));
}

void check_options(const Checkpoint& dense, const UpcycleOptions& o) {
    surgery::require_dense(dense, "upcycling");
    if (o.moe.experts < 1) {
        throw UserError("", "model.moe.experts",
                        "upcycling needs at least one expert, found " + std::to_string(o.moe.experts));
    }
    surgery::require_one_of(o.router_init, {"normal", "zeros"}, "router_init");
    surgery::require_one_of(o.expert_init, {"copy", "noise", "drop"}, "expert_init");
    if (!std::isfinite(o.noise_std) || o.noise_std < 0) {
        throw UserError("", "noise_std", "expected a finite non-negative number (σ relative to each "
                                         "tensor's std), found " + std::to_string(o.noise_std));
    }
    if (!(o.drop_ratio >= 0 && o.drop_ratio <= 1)) {
        throw UserError("", "drop_ratio", "expected a fraction of the hidden neurons in [0, 1], found " +
                                              std::to_string(o.drop_ratio));
    }
    surgery::require_one_of(o.optimizer_state, {"reset", "copy"}, "optimizer_state");
    if (o.optimizer_state == "copy" && !dense.has_optimizer) {
        throw UserError(dense.path.string(), "optimizer_state",
                        "copy needs the dense checkpoint's optimizer moments, and it has none "
                        "(use reset)");
    }
}

}  // namespace

Checkpoint upcycle_checkpoint(const Checkpoint& dense, const UpcycleOptions& o) {
    check_options(dense, o);
    Checkpoint out;
    out.config = dense.config;
    out.config.model.moe = o.moe;
    validate(out.config, "");
    const bool copy_optimizer = o.optimizer_state == "copy";
    const ModelConfig& model = out.config.model;
    const int64_t C = model.channels, hidden = 4 * C, E = model.moe.experts;
    const std::vector<int> moe_layers = moe_layer_indices(model);
    const auto layout = parameter_layout(model);
    const int64_t dropped =
        o.expert_init == "drop" ? std::llround(o.drop_ratio * static_cast<double>(hidden)) : 0;

    std::vector<std::string> moe_prefixes;  // "blocks.{l}.mlp."
    for (int l : moe_layers) moe_prefixes.push_back("blocks." + std::to_string(l) + ".mlp.");
    auto in_moe_mlp = [&](const std::string& name) {
        return std::any_of(moe_prefixes.begin(), moe_prefixes.end(),
                           [&](const std::string& p) { return name.rfind(p, 0) == 0; });
    };

    surgery::SurgeryTensors t;
    // everything outside the upcycled MLPs: bit for bit (moments too, when copied)
    for (const auto& info : layout) {
        if (in_moe_mlp(info.name)) continue;
        t.weights[info.name] = surgery::source_tensor(dense, info.name, info.shape);
        if (copy_optimizer) {
            t.exp_avg[info.name] =
                surgery::source_tensor(dense, kOptimizerExpAvgPrefix + info.name, info.shape);
            t.exp_avg_sq[info.name] =
                surgery::source_tensor(dense, kOptimizerExpAvgSqPrefix + info.name, info.shape);
        }
    }

    Rng router_rng(o.seed);
    Rng expert_rng(o.seed ^ kExpertStreamSalt);
    for (int l : moe_layers) {
        const std::string block = "blocks." + std::to_string(l) + ".";
        const DenseMlp mlp = dense_mlp(dense, block, C);
        const std::string router = block + "mlp.router.weight";
        HostTensor router_weight{{E, C}, std::vector<float>(static_cast<std::size_t>(E * C), 0.0f)};
        if (o.router_init == "normal") {
            for (float& v : router_weight.data) v = static_cast<float>(kRouterInitStd) * router_rng.normal();
        }
        if (copy_optimizer) {
            t.exp_avg[router] = HostTensor{{E, C}, std::vector<float>(router_weight.data.size(), 0.0f)};
            t.exp_avg_sq[router] = t.exp_avg[router];
        }
        t.weights[router] = std::move(router_weight);

        const Moments fc_w = tensor_moments(mlp.fc_weight->data);
        const Moments fc_b = tensor_moments(mlp.fc_bias->data);
        const Moments proj_w = tensor_moments(mlp.proj_weight->data);
        for (int64_t e = 0; e < E; ++e) {
            const std::string x = block + "mlp.experts." + std::to_string(e) + ".";
            HostTensor fc_weight, fc_bias, proj_weight, proj_bias;
            if (o.expert_init == "noise") {
                fc_weight = with_noise(*mlp.fc_weight, o.noise_std, expert_rng);
                fc_bias = with_noise(*mlp.fc_bias, o.noise_std, expert_rng);
                proj_weight = with_noise(*mlp.proj_weight, o.noise_std, expert_rng);
                proj_bias = with_noise(*mlp.proj_bias, o.noise_std, expert_rng);
            } else {
                fc_weight = *mlp.fc_weight;
                fc_bias = *mlp.fc_bias;
                proj_weight = *mlp.proj_weight;
                proj_bias = *mlp.proj_bias;
            }
            if (o.expert_init == "drop") {
                const auto neurons = choose_neurons(hidden, dropped, expert_rng);
                for (int64_t n : neurons) {  // fc.weight row n: [4C, C]
                    for (int64_t c = 0; c < C; ++c) fc_weight.data[n * C + c] = draw(fc_w, expert_rng);
                }
                for (int64_t n : neurons) fc_bias.data[n] = draw(fc_b, expert_rng);
                for (int64_t c = 0; c < C; ++c) {  // proj.weight column n: [C, 4C]
                    for (int64_t n : neurons) proj_weight.data[c * hidden + n] = draw(proj_w, expert_rng);
                }
            }
            t.weights[x + "fc.weight"] = std::move(fc_weight);
            t.weights[x + "fc.bias"] = std::move(fc_bias);
            t.weights[x + "proj.weight"] = std::move(proj_weight);
            t.weights[x + "proj.bias"] = std::move(proj_bias);
            if (copy_optimizer) {
                for (const char* suffix : kMlpTensors) {
                    const auto& shape = mlp.by_suffix(suffix)->shape;
                    const std::string name = block + "mlp." + suffix;
                    t.exp_avg[x + suffix] =
                        surgery::source_tensor(dense, kOptimizerExpAvgPrefix + name, shape);
                    t.exp_avg_sq[x + suffix] =
                        surgery::source_tensor(dense, kOptimizerExpAvgSqPrefix + name, shape);
                }
            }
        }
    }

    out.state = dense.state;
    out.has_optimizer = copy_optimizer;
    out.optimizer_step = copy_optimizer ? dense.optimizer_step : 0;
    out.file = surgery::assemble_file(layout, std::move(t), copy_optimizer);

    nlohmann::json record = {
        {"method", "upcycle"},
        {"source", {{"step", dense.state.step}, {"parameters", surgery::weight_count(dense.file)}}},
        {"parameters", surgery::weight_count(out.file)},
        {"moe", to_json(out.config)["model"]["moe"]},
        {"moe_layers", moe_layers},
        {"router_init", o.router_init},
        {"expert_init", o.expert_init},
        {"optimizer_state", o.optimizer_state},
        {"seed", o.seed},
    };
    if (o.router_init == "normal") record["router_init_std"] = kRouterInitStd;
    if (o.expert_init == "noise") record["noise_std"] = o.noise_std;
    if (o.expert_init == "drop") {
        record["drop_ratio"] = o.drop_ratio;
        record["dropped_neurons_per_expert"] = dropped;
    }
    surgery::finish_metadata(out, dense, record);
    return out;
}

}  // namespace upcycle
