#include "core/train_log.h"

#include <limits>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/errors.h"

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

// nlohmann writes a non-finite number as null: it reads back as NaN.
double number(const nlohmann::json& record, const char* key) {
    const auto it = record.find(key);
    if (it == record.end() || it->is_null()) return std::numeric_limits<double>::quiet_NaN();
    return it->get<double>();
}

StepRecord step_from(const nlohmann::json& line) {
    StepRecord r;
    r.step = line.at("step").get<int64_t>();
    r.loss = number(line, "loss");
    r.lr = number(line, "lr");
    r.grad_norm = number(line, "grad_norm");
    r.tokens = line.at("tokens").get<int64_t>();
    r.flops = number(line, "flops");
    r.seconds = number(line, "seconds");
    if (line.contains("aux_loss")) r.aux_loss = number(line, "aux_loss");
    for (const auto& layer : line.value("routing", nlohmann::json::array())) {
        RoutingStats stats;
        stats.tokens_per_expert = layer.at("tokens_per_expert").get<std::vector<int64_t>>();
        stats.dropped_fraction = number(layer, "dropped_fraction");
        stats.router_entropy = number(layer, "router_entropy");
        stats.aux_loss = number(layer, "aux_loss");
        stats.z_loss = number(layer, "z_loss");
        r.moe_layers.push_back(layer.at("layer").get<int>());
        r.routing.push_back(std::move(stats));
    }
    return r;
}

LoggedEval eval_from(const nlohmann::json& line) {
    static const std::set<std::string> kFixedKeys = {
        "kind", "step", "flops", "seconds", "val_loss", "val_accuracy", "val_tokens", "milestones"};
    LoggedEval e;
    e.record.step = line.at("step").get<int64_t>();
    e.record.flops = number(line, "flops");
    e.record.seconds = number(line, "seconds");
    e.record.result.loss = number(line, "val_loss");
    e.record.result.accuracy = number(line, "val_accuracy");
    e.record.result.tokens = line.value("val_tokens", int64_t{0});
    for (const auto& [key, value] : line.items()) {
        if (!kFixedKeys.count(key)) e.record.result.extra[key] = number(line, key.c_str());
    }
    for (const auto& percent : line.value("milestones", nlohmann::json::array())) {
        e.milestones.push_back(percent.get<double>());
    }
    return e;
}

}  // namespace

TrainLogContents read_train_log(const std::filesystem::path& path, int64_t up_to_step) {
    TrainLogContents contents;
    std::ifstream in(path);
    std::string text;
    for (int64_t line_number = 1; std::getline(in, text); ++line_number) {
        nlohmann::json line;
        try {
            line = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception&) {
            continue;  // a line cut by a kill
        }
        try {
            if (line.at("step").get<int64_t>() > up_to_step) continue;
            const std::string kind = line.at("kind").get<std::string>();
            if (kind == "train") {
                contents.steps.push_back(step_from(line));
            } else if (kind == "eval") {
                contents.evals.push_back(eval_from(line));
            } else {
                throw UserError(path.string(), "kind",
                                "line " + std::to_string(line_number) + ": unknown record kind '" +
                                    kind + "' (expected train or eval)");
            }
        } catch (const nlohmann::json::exception& e) {
            throw UserError(
                path.string(), "",
                "line " + std::to_string(line_number) + ": not a training-log record: " + e.what());
        }
    }
    return contents;
}

bool logs_step(const TrainConfig& train, int64_t step) {
    return step % train.log_every == 0 || step == train.steps;
}

std::filesystem::path log_path(const std::filesystem::path& out_dir) {
    return out_dir / "log.jsonl";
}

TrainLog::TrainLog(const std::filesystem::path& path) : path_(path), out_(path, std::ios::app) {
    if (!out_) throw UserError(path.string(), "", "cannot open the training log for writing");
}

void TrainLog::flush() {
    out_.flush();
    // a lost record would make the checkpoint that follows untrustworthy (see read_train_log)
    if (!out_) {
        throw UserError(path_.string(), "", "cannot write the training log (is the disk full?)");
    }
}

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

void TrainLog::write_eval(const EvalRecord& record, const std::vector<Milestone>& milestones) {
    nlohmann::json line{{"kind", "eval"},
                        {"step", record.step},
                        {"flops", record.flops},
                        {"seconds", record.seconds},
                        {"val_loss", record.result.loss},
                        {"val_accuracy", record.result.accuracy},
                        {"val_tokens", record.result.tokens}};
    for (const auto& [key, value] : record.result.extra) line[key] = value;
    for (const Milestone& m : milestones) line["milestones"].push_back(m.percent);
    out_ << line.dump() << '\n';
    flush();
}

}  // namespace upcycle
