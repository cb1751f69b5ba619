#include "runner/trial_spec.h"

#include <fmt/format.h>

#include "core/errors.h"
#include "core/train.h"
#include "runner/executor.h"
#include "runner/json_file.h"

namespace upcycle {

namespace {

// Changes when a field changes meaning; a task refuses a spec of another format.
constexpr const char* kTrialSpecFormat = "upcycle trial 1";

}  // namespace

TrialSpec trial_spec_of(const TrialRecord& trial, const std::optional<TrialRecord>& parent,
                        const std::filesystem::path& runs_dir) {
    TrialSpec spec{trial.hash, trial.config, std::nullopt};
    if (!parent) return spec;
    const auto dir = trial_directory(runs_dir, trial.hash);
    TrialSpecParent p;
    p.hash = parent->hash;
    p.config = parent->config;
    p.checkpoint = checkpoint_path(trial_directory(runs_dir, parent->hash)).lexically_relative(dir);
    if (parent->status == TrialStatus::Done) {
        p.flops = parent->flops;
        p.seconds = parent->seconds;
    }
    spec.parent = std::move(p);
    return spec;
}

std::filesystem::path trial_spec_path(const std::filesystem::path& trial_dir) {
    return trial_dir / kTrialSpecFile;
}

void write_trial_spec(const std::filesystem::path& trial_dir, const TrialSpec& spec) {
    nlohmann::json json{{"format", kTrialSpecFormat},
                        {"hash", spec.hash},
                        {"method", spec.config.value("method", "")},
                        {"config", spec.config},
                        {"parent", nullptr}};
    if (spec.parent) {
        nlohmann::json parent{{"hash", spec.parent->hash},
                              {"config", spec.parent->config},
                              {"checkpoint", spec.parent->checkpoint.string()}};
        if (spec.parent->flops) parent["flops"] = *spec.parent->flops;
        if (spec.parent->seconds) parent["seconds"] = *spec.parent->seconds;
        json["parent"] = parent;
    }
    std::filesystem::create_directories(trial_dir);
    write_json_atomically(trial_spec_path(trial_dir), json);
}

TrialSpec read_trial_spec(const std::filesystem::path& trial_dir) {
    const auto file = trial_spec_path(trial_dir);
    if (!std::filesystem::exists(file)) {
        throw UserError(file.string(), "",
                        "no trial spec here: `upcycle run --executor slurm` writes it before it "
                        "submits the trial (is --runs the folder it submitted with?)");
    }
    const nlohmann::json json = read_json_object(file);
    const auto format = json_field<std::string>(json, "format", file);
    if (format != kTrialSpecFormat) {
        throw UserError(file.string(), "format",
                        fmt::format("expected \"{}\", got \"{}\" (written by another upcycle)",
                                    kTrialSpecFormat, format));
    }
    TrialSpec spec;
    spec.hash = json_field<std::string>(json, "hash", file);
    spec.config = json_object_field(json, "config", file);
    if (trial_hash(spec.config) != spec.hash) {
        throw UserError(file.string(), "config",
                        fmt::format("does not hash to the trial's hash {} (the file was edited)",
                                    spec.hash.substr(0, 12)));
    }
    const auto parent = json.find("parent");
    if (parent != json.end() && !parent->is_null()) {
        const auto& p = json_object_field(json, "parent", file);
        TrialSpecParent out;
        out.hash = json_field<std::string>(p, "hash", file, "parent");
        out.config = json_object_field(p, "config", file, "parent");
        out.checkpoint = json_field<std::string>(p, "checkpoint", file, "parent");
        if (p.contains("flops")) out.flops = json_field<double>(p, "flops", file, "parent");
        if (p.contains("seconds")) out.seconds = json_field<double>(p, "seconds", file, "parent");
        spec.parent = std::move(out);
    }
    return spec;
}

}  // namespace upcycle
