#include "core/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <sstream>

#include <fmt/format.h>

#include "core/build_info.h"
#include "core/errors.h"
#include "core/flops.h"

namespace upcycle {

namespace {

constexpr const char* kConfigKey = "upcycle.config";
constexpr const char* kStepKey = "upcycle.step";
constexpr const char* kRngKey = "upcycle.rng.data";
constexpr const char* kTokensKey = "upcycle.tokens";
constexpr const char* kFlopsKey = "upcycle.flops";
constexpr const char* kSecondsKey = "upcycle.seconds";
constexpr const char* kOptimizerStepKey = "upcycle.optimizer_step";
constexpr const char* kProvenanceKey = "upcycle.provenance";

std::string utc_now() {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&now, &tm);
    char text[32];
    std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

std::string rng_to_string(const Rng::State& s) {
    return fmt::format("{:016x} {:016x} {:016x} {:016x}", s[0], s[1], s[2], s[3]);
}

const std::string& required(const std::map<std::string, std::string>& metadata,
                            const std::filesystem::path& path, const char* key) {
    const auto it = metadata.find(key);
    if (it == metadata.end()) {
        throw UserError(path.string(), key,
                        "missing from __metadata__: not an upcycle checkpoint (or written by an "
                        "older version)");
    }
    return it->second;
}

template <class T>
T parse_number(const std::string& text, const std::filesystem::path& path, const char* key) {
    std::istringstream in(text);
    T value{};
    in >> value;
    if (!in || !in.eof()) {
        throw UserError(path.string(), key,
                        "expected a number in __metadata__, found '" + text + "'");
    }
    return value;
}

Rng::State rng_from_string(const std::string& text, const std::filesystem::path& path) {
    std::istringstream in(text);
    Rng::State s{};
    for (auto& word : s) in >> std::hex >> word;
    if (!in) throw UserError(path.string(), kRngKey, "expected four hexadecimal words");
    return s;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_checkpoint_tensors(
    const ModelConfig& model, bool with_optimizer) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
    const auto layout = parameter_layout(model);
    for (const auto& info : layout) expected.emplace_back(info.name, info.shape);
    if (with_optimizer) {
        for (const auto& info : layout) {
            expected.emplace_back(kOptimizerExpAvgPrefix + info.name, info.shape);
            expected.emplace_back(kOptimizerExpAvgSqPrefix + info.name, info.shape);
        }
    }
    return expected;
}

std::map<std::string, std::string> make_provenance(const Backend& backend) {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
    return {{"git_revision", build_info::git_revision},
            {"version", build_info::version},
            {"build_type", build_info::build_type},
            {"compiler", build_info::compiler},
            {"host", host},
            {"time", utc_now()},
            {"backend", backend.describe()}};
}

void save_checkpoint(const std::filesystem::path& path, const RunConfig& config, Model& model,
                     AdamW* optimizer, const TrainingState& state) {
    UPCYCLE_ASSERT(optimizer == nullptr || optimizer->holds_all(),
                   "a checkpoint holds the moments of every parameter: gather a shard first");
    const auto params = model.parameters().to_host();
    std::vector<float> m, v;
    if (optimizer) {
        m = optimizer->exp_avg().to_host();
        v = optimizer->exp_avg_sq().to_host();
    }
    std::vector<TensorView> views;
    for (const auto& info : model.layout()) {
        views.push_back({info.name, info.shape, params.data() + info.offset});
    }
    if (optimizer) {
        for (const auto& info : model.layout()) {
            views.push_back(
                {kOptimizerExpAvgPrefix + info.name, info.shape, m.data() + info.offset});
            views.push_back(
                {kOptimizerExpAvgSqPrefix + info.name, info.shape, v.data() + info.offset});
        }
    }
    const nlohmann::json provenance(make_provenance(model.backend()));
    std::map<std::string, std::string> metadata = {
        {kConfigKey, to_json(config).dump()},
        {kStepKey, std::to_string(state.step)},
        {kRngKey, rng_to_string(state.data_rng)},
        {kTokensKey, std::to_string(state.tokens)},
        {kFlopsKey, fmt::format("{:.17g}", state.flops)},
        {kSecondsKey, fmt::format("{:.17g}", state.seconds)},
        {kProvenanceKey, provenance.dump()},
    };
    if (optimizer) metadata[kOptimizerStepKey] = std::to_string(optimizer->step());
    write_safetensors(path, views, metadata);
}

namespace {
TrainingState training_state_from(const std::map<std::string, std::string>& meta,
                                  const std::filesystem::path& path) {
    TrainingState state;
    state.step = parse_number<int64_t>(required(meta, path, kStepKey), path, kStepKey);
    state.data_rng = rng_from_string(required(meta, path, kRngKey), path);
    state.tokens = parse_number<int64_t>(required(meta, path, kTokensKey), path, kTokensKey);
    state.flops = parse_number<double>(required(meta, path, kFlopsKey), path, kFlopsKey);
    state.seconds = parse_number<double>(required(meta, path, kSecondsKey), path, kSecondsKey);
    // counters of training done: never negative (a resume would count from there), and finite
    const auto require_count = [&](bool ok, const char* key, const std::string& found) {
        if (!ok) {
            throw UserError(path.string(), key,
                            "expected a non-negative finite count, found " + found);
        }
    };
    require_count(state.step >= 0, kStepKey, std::to_string(state.step));
    require_count(state.tokens >= 0, kTokensKey, std::to_string(state.tokens));
    require_count(std::isfinite(state.flops) && state.flops >= 0, kFlopsKey,
                  fmt::format("{}", state.flops));
    require_count(std::isfinite(state.seconds) && state.seconds >= 0, kSecondsKey,
                  fmt::format("{}", state.seconds));
    return state;
}
}  // namespace

TrainingState read_training_state(const std::filesystem::path& path) {
    return training_state_from(read_safetensors_header(path).metadata, path);
}

namespace {
RunConfig config_from(const std::map<std::string, std::string>& meta,
                      const std::filesystem::path& path) {
    nlohmann::json config_json;
    try {
        config_json = nlohmann::json::parse(required(meta, path, kConfigKey));
    } catch (const nlohmann::json::exception& e) {
        throw UserError(path.string(), kConfigKey, std::string("not valid JSON: ") + e.what());
    }
    const std::string source = path.string() + " (" + kConfigKey + ")";
    RunConfig config = run_config_from_json(config_json, source);
    validate(config, source);
    return config;
}
}  // namespace

RunConfig read_checkpoint_config(const std::filesystem::path& path) {
    return config_from(read_safetensors_header(path).metadata, path);
}

Checkpoint read_checkpoint(const std::filesystem::path& path) {
    return checkpoint_from_safetensors(read_safetensors(path), path);
}

Checkpoint checkpoint_from_safetensors(SafetensorsFile file, const std::filesystem::path& path) {
    Checkpoint ckpt;
    ckpt.path = path;
    ckpt.file = std::move(file);
    ckpt.metadata = ckpt.file.metadata;
    const auto& meta = ckpt.metadata;
    ckpt.config = config_from(meta, path);
    ckpt.state = training_state_from(meta, path);
    // Every tensor the config expects has at least one element, so a config with more
    // parameters than the file holds floats cannot match it; refusing it before the expected
    // layout is built keeps a forged config (millions of experts, channels near 2^31) from
    // building one far larger than the file, or overflowing its sizes.
    double floats = 0;
    for (const auto& [name, tensor] : ckpt.file.tensors) floats += tensor.data.size();
    const double parameters = parameter_count_as_double(ckpt.config.model);
    if (parameters > floats) {
        throw UserError(path.string(), kConfigKey,
                        fmt::format("describes a model of {:.4g} parameters ({}), but the file "
                                    "holds {:.0f} floats in all",
                                    parameters, describe_model(ckpt.config.model), floats));
    }
    for (const auto& name : ckpt.file.order) {
        if (name.rfind("optimizer.", 0) == 0) ckpt.has_optimizer = true;
    }
    if (ckpt.has_optimizer) {
        ckpt.optimizer_step =
            parse_number<int64_t>(required(meta, path, kOptimizerStepKey), path, kOptimizerStepKey);
        if (ckpt.optimizer_step < 0) {
            throw UserError(
                path.string(), kOptimizerStepKey,
                "expected a non-negative count, found " + std::to_string(ckpt.optimizer_step));
        }
    }
    expect_tensors(ckpt.file, path,
                   expected_checkpoint_tensors(ckpt.config.model, ckpt.has_optimizer));
    return ckpt;
}

void write_checkpoint(const std::filesystem::path& path, const Checkpoint& ckpt,
                      const Backend& backend) {
    std::vector<TensorView> views;
    for (const auto& name : ckpt.file.order) {
        const auto& tensor = ckpt.file.tensors.at(name);
        views.push_back({name, tensor.shape, tensor.data.data()});
    }
    std::map<std::string, std::string> metadata = ckpt.metadata;
    metadata.erase("format");  // write_safetensors sets it
    if (metadata.count(kProvenanceKey) && !metadata.count("upcycle.parent_provenance")) {
        metadata["upcycle.parent_provenance"] = metadata[kProvenanceKey];
    }
    metadata[kProvenanceKey] = nlohmann::json(make_provenance(backend)).dump();
    metadata[kConfigKey] = to_json(ckpt.config).dump();
    metadata[kStepKey] = std::to_string(ckpt.state.step);
    metadata[kRngKey] = rng_to_string(ckpt.state.data_rng);
    metadata[kTokensKey] = std::to_string(ckpt.state.tokens);
    metadata[kFlopsKey] = fmt::format("{:.17g}", ckpt.state.flops);
    metadata[kSecondsKey] = fmt::format("{:.17g}", ckpt.state.seconds);
    if (ckpt.has_optimizer)
        metadata[kOptimizerStepKey] = std::to_string(ckpt.optimizer_step);
    else
        metadata.erase(kOptimizerStepKey);
    write_safetensors(path, views, metadata);
}

void load_into(const Checkpoint& ckpt, Model& model, AdamW* optimizer) {
    const auto layout = parameter_layout(ckpt.config.model);
    UPCYCLE_ASSERT(model.num_parameters() == layout.back().offset + layout.back().numel,
                   "model does not match the checkpoint's configuration");
    std::vector<float> flat(model.num_parameters());
    auto gather = [&](const std::string& prefix) {
        for (const auto& info : model.layout()) {
            const auto& tensor = ckpt.file.tensors.at(prefix + info.name);
            std::copy(tensor.data.begin(), tensor.data.end(),
                      flat.begin() + static_cast<std::ptrdiff_t>(info.offset));
        }
    };
    gather("");
    model.parameters().copy_from_host(flat);
    // the optimizer's shard of a flat buffer (all of it, unless a ZeRO-1 rank's), zero past
    // the buffer's end
    auto shard_of = [&](const std::vector<float>& all) {
        const ParameterRange shard = optimizer->shard();
        std::vector<float> part(shard.size(), 0.0f);
        const std::size_t end = std::min(shard.end, all.size());
        if (shard.begin < end) {
            std::copy(all.begin() + static_cast<std::ptrdiff_t>(shard.begin),
                      all.begin() + static_cast<std::ptrdiff_t>(end), part.begin());
        }
        return part;
    };
    if (optimizer) {
        if (ckpt.has_optimizer) {
            gather(kOptimizerExpAvgPrefix);
            optimizer->exp_avg().copy_from_host(shard_of(flat));
            gather(kOptimizerExpAvgSqPrefix);
            optimizer->exp_avg_sq().copy_from_host(shard_of(flat));
            optimizer->set_step(ckpt.optimizer_step);
        } else {
            optimizer->reset();
        }
    }
}

}  // namespace upcycle
