#include "runner/trial_result.h"

#include <fmt/format.h>

#include "core/errors.h"
#include "runner/json_file.h"

namespace upcycle {

namespace {

constexpr const char* kTrialResultFormat = "upcycle result 1";

nlohmann::json state_json(const TrainingState& s) {
    return {{"step", s.step}, {"tokens", s.tokens}, {"flops", s.flops}, {"seconds", s.seconds}};
}

TrainingState state_from(const nlohmann::json& json, const std::filesystem::path& file,
                         const std::string& key) {
    const auto& s = json_object_field(json, key, file);
    TrainingState state;
    state.step = json_field<int64_t>(s, "step", file, key);
    state.tokens = json_field<int64_t>(s, "tokens", file, key);
    state.flops = json_field<double>(s, "flops", file, key);
    state.seconds = json_field<double>(s, "seconds", file, key);
    return state;
}

}  // namespace

std::filesystem::path trial_result_path(const std::filesystem::path& trial_dir) {
    return trial_dir / kTrialResultFile;
}

void write_trial_result(const std::filesystem::path& trial_dir, const TrialResult& result) {
    nlohmann::json json{{"format", kTrialResultFormat},
                        {"hash", result.hash},
                        {"status", result.done ? "done" : "failed"},
                        {"host", result.host},
                        {"finished_at", utc_now_iso()}};
    if (!result.done) {
        json["error"] = result.error;
    } else {
        const FinishedTrial& f = result.finished;
        json["origin"] = state_json(result.origin);
        json["end"] = state_json(f.end);
        json["final_evaluation"] = f.final_evaluation ? *f.final_evaluation : nlohmann::json();
        json["checkpoint"] = {{"file", f.checkpoint.filename().string()},
                              {"bytes", f.checkpoint_bytes},
                              {"sha256", f.checkpoint_sha256}};
        json["provenance"] = f.provenance;
    }
    write_json_atomically(trial_result_path(trial_dir), json);
}

TrialResult read_trial_result(const std::filesystem::path& trial_dir) {
    const auto file = trial_result_path(trial_dir);
    const nlohmann::json json = read_json_object(file);
    const auto format = json_field<std::string>(json, "format", file);
    if (format != kTrialResultFormat) {
        throw UserError(file.string(), "format",
                        fmt::format("expected \"{}\", got \"{}\"", kTrialResultFormat, format));
    }
    TrialResult result;
    result.hash = json_field<std::string>(json, "hash", file);
    result.host = json_field<std::string>(json, "host", file);
    const auto status = json_field<std::string>(json, "status", file);
    if (status == "failed") {
        result.error = json_field<std::string>(json, "error", file);
        return result;
    }
    if (status != "done") {
        throw UserError(file.string(), "status",
                        fmt::format("expected \"done\" or \"failed\", got \"{}\"", status));
    }
    result.done = true;
    result.origin = state_from(json, file, "origin");
    FinishedTrial& f = result.finished;
    f.end = state_from(json, file, "end");
    const auto final_eval = json.find("final_evaluation");
    if (final_eval == json.end()) {
        throw UserError(file.string(), "final_evaluation", "missing; expected an object or null");
    }
    if (!final_eval->is_null())
        f.final_evaluation = json_object_field(json, "final_evaluation", file);
    const auto& ckpt = json_object_field(json, "checkpoint", file);
    const auto name = json_field<std::string>(ckpt, "file", file, "checkpoint");
    if (name.empty() || name.find('/') != std::string::npos) {
        throw UserError(
            file.string(), "checkpoint.file",
            fmt::format("expected a file name in the trial's folder, got \"{}\"", name));
    }
    f.checkpoint = trial_dir / name;
    f.checkpoint_bytes = json_field<int64_t>(ckpt, "bytes", file, "checkpoint");
    f.checkpoint_sha256 = json_field<std::string>(ckpt, "sha256", file, "checkpoint");
    f.provenance = json.value("provenance", nlohmann::json());
    return result;
}

}  // namespace upcycle
