#include "core/train_log.h"

#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace upcycle {

namespace {

// Keeps the records up to `step`; a line that does not parse (cut by a kill) is dropped.
void truncate_log_after(const std::filesystem::path& log, int64_t step) {
    std::ifstream in(log);
    if (!in) return;
    std::ostringstream kept;
    std::string line;
    while (std::getline(in, line)) {
        try {
            const auto record = nlohmann::json::parse(line);
            if (record.value("step", int64_t{0}) <= step) kept << line << '\n';
        } catch (const nlohmann::json::exception&) {
            // a line cut by a kill: drop it
        }
    }
    in.close();
    std::ofstream(log, std::ios::trunc) << kept.str();
}

}  // namespace

std::filesystem::path log_path(const std::filesystem::path& out_dir) {
    return out_dir / "log.jsonl";
}

TrainLog::TrainLog(const std::filesystem::path& path) : out_(path, std::ios::app) {}

TrainLog TrainLog::start(const std::filesystem::path& path) {
    std::ofstream(path, std::ios::trunc);
    return TrainLog(path);
}

TrainLog TrainLog::resume(const std::filesystem::path& path, int64_t step) {
    truncate_log_after(path, step);
    return TrainLog(path);
}

void TrainLog::write_step(const StepRecord& record) {
    nlohmann::json line{
        {"kind", "train"},       {"step", record.step},           {"loss", record.loss},
        {"lr", record.lr},       {"grad_norm", record.grad_norm}, {"tokens", record.tokens},
        {"flops", record.flops}, {"seconds", record.seconds}};
    if (!record.moe_layers.empty()) {
        // the objective also had the MoE auxiliary losses; routing per MoE block
        line["aux_loss"] = record.aux_loss;
        for (std::size_t i = 0; i < record.routing.size(); ++i) {
            const auto& r = record.routing[i];
            line["routing"].push_back({{"layer", record.moe_layers[i]},
                                       {"tokens_per_expert", r.tokens_per_expert},
                                       {"dropped_fraction", r.dropped_fraction},
                                       {"router_entropy", r.router_entropy},
                                       {"aux_loss", r.aux_loss},
                                       {"z_loss", r.z_loss}});
        }
    }
    out_ << line.dump() << '\n';
}

void TrainLog::write_eval(const EvalRecord& record) {
    nlohmann::json line{{"kind", "eval"},
                        {"step", record.step},
                        {"flops", record.flops},
                        {"seconds", record.seconds},
                        {"val_loss", record.result.loss},
                        {"val_accuracy", record.result.accuracy},
                        {"val_tokens", record.result.tokens}};
    for (const auto& [key, value] : record.result.extra) line[key] = value;
    out_ << line.dump() << '\n' << std::flush;
}

}  // namespace upcycle
