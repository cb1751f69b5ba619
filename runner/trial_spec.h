#pragma once
// trial.json: everything a cluster task needs to run one trial without the results database,
// written into the trial's folder (runs/HASH/) by the submitting host before it submits:
// the trial's resolved config (its identity), and for a continuation its parent's hash, config,
// checkpoint (relative to the trial's folder, so the runs folder may be mounted anywhere) and,
// when the parent had finished by then, its FLOPs and wall seconds (else the task reads them
// from the parent's result.json). Budget milestones follow from these (trial_milestones).
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "runner/store/store.h"
#include "runner/trial_setup.h"

namespace upcycle {

inline constexpr const char* kTrialSpecFile = "trial.json";

struct TrialSpecParent {
    std::string hash;
    nlohmann::json config;
    std::filesystem::path checkpoint;  // relative to the trial's folder
    std::optional<double> flops, seconds;
};

struct TrialSpec {
    std::string hash;
    nlohmann::json config;  // the canonical config (PlannedTrial::config)
    std::optional<TrialSpecParent> parent;
};

// The spec of a trial of the store, whose folder is trial_directory(runs_dir, trial.hash).
TrialSpec trial_spec_of(const TrialRecord& trial, const std::optional<TrialRecord>& parent,
                        const std::filesystem::path& runs_dir);

std::filesystem::path trial_spec_path(const std::filesystem::path& trial_dir);
void write_trial_spec(const std::filesystem::path& trial_dir, const TrialSpec& spec);
// UserError naming the file and the key when it is missing or malformed, or when its config
// does not hash to its hash.
TrialSpec read_trial_spec(const std::filesystem::path& trial_dir);

}  // namespace upcycle
