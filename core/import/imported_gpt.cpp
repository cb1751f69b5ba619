#include "core/import/imported_gpt.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/flops.h"
#include "core/model/model.h"
#include "core/sha256.h"
#include "core/tensor.h"
#include "core/train.h"

namespace upcycle {

namespace {

// A run name from the source path: its last component without extension ("gpt2" for a
// folder gpt2/, "gpt2_124M" for gpt2_124M.bin).
std::string run_name(const std::string& source_name) {
    std::filesystem::path p(source_name);
    if (p.filename().empty()) p = p.parent_path();
    const std::string stem = p.stem().string();
    return stem.empty() ? "imported" : stem;
}

double checked_sunk_flops(const SunkCost& sunk, const ModelConfig& model) {
    if (sunk.tokens.has_value() == sunk.flops.has_value()) {
        throw UserError("", "--sunk-tokens",
                        "declare what training the source model cost, for budgets as % of it: "
                        "exactly one of --sunk-tokens N (its training tokens) or --sunk-flops F");
    }
    const char* key = sunk.tokens ? "--sunk-tokens" : "--sunk-flops";
    const double value = sunk.tokens ? *sunk.tokens : *sunk.flops;
    // int64 tokens: the checkpoint's token counter
    if (!std::isfinite(value) || value <= 0 || (sunk.tokens && value >= 9e18)) {
        throw UserError("", key, fmt::format("expected a positive finite number, found {}", value));
    }
    return sunk.tokens ? *sunk.tokens * flops_per_token(model).training : *sunk.flops;
}

}  // namespace

void expect_shape(const std::vector<int64_t>& found, const std::vector<int64_t>& expected,
                  const std::filesystem::path& file, const std::string& name) {
    if (found != expected) {
        throw UserError(
            file.string(), name,
            "expected shape " + shape_string(expected) + ", found " + shape_string(found));
    }
}

Checkpoint imported_checkpoint(const ImportedGpt& source, const SunkCost& sunk,
                               const std::string& source_name,
                               const std::vector<std::string>& overrides) {
    // the cost of the model as it was trained: its own context
    const double sunk_flops = checked_sunk_flops(sunk, source.model);

    RunConfig base;
    base.name = run_name(source_name);
    base.model = source.model;
    // a GPT-2 reads token ids; which files is the continuation's to say (data.train_glob, …)
    base.data.source = DataSource::Tokens;
    const RunConfig config =
        parse_run_config(to_json(base).dump(), source_name + " (imported)", overrides);
    nlohmann::json found = to_json(config)["model"];
    nlohmann::json kept = to_json(base)["model"];
    found.erase("context");
    kept.erase("context");
    for (const auto& [key, value] : kept.items()) {
        if (found[key] != value) {
            throw UserError(source_name, "model." + key,
                            fmt::format("an imported model keeps the source's shape ({}); only "
                                        "model.context may be lowered",
                                        describe_model(source.model)));
        }
    }
    const int T = config.model.context;
    if (T > source.model.context) {
        throw UserError(source_name, "model.context",
                        fmt::format("the source has {} learned positions; model.context may be "
                                    "at most that, found {}",
                                    source.model.context, T));
    }

    Checkpoint ckpt;
    ckpt.config = config;
    for (const auto& info : parameter_layout(config.model)) {
        HostTensor tensor = source.weights.at(info.name);
        if (info.name == "wpe.weight") {
            // the first T learned positions: [T_source, C] → [T, C]
            tensor.shape[0] = T;
            tensor.data.resize(static_cast<std::size_t>(T) * config.model.channels);
        }
        UPCYCLE_ASSERT(tensor.shape == info.shape,
                       "imported tensor " + info.name + " does not match the layout");
        ckpt.file.order.push_back(info.name);
        ckpt.file.tensors.emplace(info.name, std::move(tensor));
    }
    ckpt.state.step = 0;
    ckpt.state.data_rng = data_stream(config.train.seed).state();
    ckpt.state.tokens = sunk.tokens ? std::llround(*sunk.tokens) : 0;
    ckpt.state.flops = sunk_flops;
    ckpt.state.seconds = 0;

    const nlohmann::json record = {
        {"format", source.format},
        {"source", source_name},
        {"sha256", sha256_file(source.weights_file)},
        {"sunk_flops", sunk_flops},
        {"sunk_tokens", sunk.tokens ? nlohmann::json(*sunk.tokens) : nlohmann::json(nullptr)},
        {"declared", sunk.tokens ? "tokens" : "flops"},
    };
    ckpt.metadata[kImportKey] = record.dump();
    return ckpt;
}

std::optional<ImportRecord> import_record(const std::map<std::string, std::string>& metadata,
                                          const std::filesystem::path& path) {
    const auto it = metadata.find(kImportKey);
    if (it == metadata.end()) return std::nullopt;
    const auto bad = [&](const std::string& what) {
        return UserError(path.string(), kImportKey, "malformed import record: " + what);
    };
    nlohmann::json json;
    try {
        json = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
        throw bad(std::string("not JSON (") + e.what() + ")");
    }
    ImportRecord record;
    try {
        record.format = json.at("format").get<std::string>();
        record.source = json.at("source").get<std::string>();
        record.sha256 = json.at("sha256").get<std::string>();
        record.sunk_flops = json.at("sunk_flops").get<double>();
        if (!json.at("sunk_tokens").is_null())
            record.sunk_tokens = json.at("sunk_tokens").get<double>();
        record.declared = json.at("declared").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
        throw bad(e.what());
    }
    if (!std::isfinite(record.sunk_flops) || record.sunk_flops <= 0) {
        throw bad(fmt::format("sunk_flops must be a positive number, found {}", record.sunk_flops));
    }
    return record;
}

}  // namespace upcycle
