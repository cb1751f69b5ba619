#include "core/sweep/sweep.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/optim/schedule.h"
#include "core/sha256.h"
#include "core/yaml_input.h"

namespace upcycle {

namespace {

using json = nlohmann::json;

// scratch has no sunk cost: it also runs to the largest budget plus this (percent)
constexpr double kScratchExtraPercent = 100.0;
// a sweep that expands to more points than this is surely a typo in a grid
constexpr std::size_t kMaxSweepPoints = 100000;
const std::vector<double> kDefaultBudgets = {10, 25, 50, 100};
const std::vector<std::string> kTopLevelKeys = {"name", "model",      "data",     "train",
                                                "eval", "checkpoint", "pretrain", "continue",
                                                "grid", "zip",        "seeds"};
const std::vector<std::string> kRunSections = {"name",  "model", "data",
                                               "train", "eval",  "checkpoint"};
const std::vector<std::string> kContinueKeys = {"budget_unit", "budgets", "methods"};
const char* const kTrainStepsHint =
    "a sweep sets the pretraining length with pretrain.steps, and the continuations' lengths "
    "come from continue.budgets";
const char* const kModelMoeHint =
    "the pretrained model is dense: set MoE options under continue.methods.upcycle and "
    "continue.methods.scratch";

// ---- small helpers ------------------------------------------------------------------------

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
    return out;
}

bool contains(const std::vector<std::string>& list, const std::string& word) {
    return std::find(list.begin(), list.end(), word) != list.end();
}

void require_choice(const std::string& value, const std::vector<std::string>& choices,
                    const std::string& source, const std::string& key, const std::string& where) {
    if (contains(choices, value)) return;
    throw UserError(source, key, choice_error(choices, value) + where);
}

// The continuation method `name` names (dense, upcycle, scratch, warmstart), if any.
std::optional<Method> continuation_method(const std::string& name) {
    const auto method = find_choice<Method>(name);
    if (!method || *method == Method::Pretrain) return std::nullopt;
    return method;
}

std::vector<std::string> continuation_method_names() {
    std::vector<std::string> names;
    for (const Method m : continuation_methods()) names.push_back(to_string(m));
    return names;
}

// The entries of a mapping by key (YAML keys are scalars here).
std::string key_text(const YAML::Node& key) { return key.IsScalar() ? key.Scalar() : "?"; }

// The key node of `key` in a mapping (for its line), or an undefined node.
YAML::Node key_node(const YAML::Node& map, const std::string& key) {
    if (!map.IsDefined() || !map.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    for (const auto& entry : map) {
        if (key_text(entry.first) == key) return entry.first;
    }
    return YAML::Node(YAML::NodeType::Undefined);
}

YAML::Node child(const YAML::Node& map, const std::string& key) {
    if (!map.IsDefined() || !map.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    for (const auto& entry : map) {
        if (key_text(entry.first) == key) return entry.second;
    }
    return YAML::Node(YAML::NodeType::Undefined);
}

bool present(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

std::string flow_text(const YAML::Node& node) {
    if (node.IsScalar()) return node.Scalar();
    YAML::Emitter out;
    out << YAML::Flow << node;
    return out.c_str();
}

// A dotted key as a path in the sweep tree. Shorthands: a path may start with a method name
// (upcycle.experts → continue.methods.upcycle.experts) or a continue key (budgets →
// continue.budgets).
std::vector<std::string> sweep_path(const std::string& dotted) {
    std::vector<std::string> keys = split_dotted(dotted);
    if (keys.empty()) return keys;
    if (continuation_method(keys[0]))
        keys.insert(keys.begin(), {"continue", "methods"});
    else if (keys[0] == "budgets" || keys[0] == "budget_unit")
        keys.insert(keys.begin(), "continue");
    return keys;
}

// ---- typed reading, by the type of the default value -------------------------------------

// `node` read as the type of `like` (the default); key names it in errors.
json read_like(const YAML::Node& node, const json& like, const std::string& key,
               const std::string& source) {
    const auto fail = [&](const std::string& expected) -> json {
        std::string message = "expected " + expected;
        if (node.IsScalar()) message += ", found '" + node.Scalar() + "'";
        throw UserError(source, key, message + line_of(node));
    };
    if (like.is_string()) {
        if (node.IsScalar()) return node.Scalar();
        if (node.IsSequence()) {  // a list of scalars is kept as "a,b,c" (e.g. layers: [1, 3])
            std::vector<std::string> items;
            for (const auto& item : node) {
                if (!item.IsScalar()) fail("a string or a list of scalars");
                items.push_back(item.Scalar());
            }
            return join(items, ",");
        }
        return fail("a string");
    }
    if (!node.IsScalar()) {
        return fail(like.is_number_float() ? "a number"
                    : like.is_boolean()    ? "true or false"
                                           : "an integer");
    }
    if (like.is_boolean()) {
        try {
            return node.as<bool>();
        } catch (const YAML::BadConversion&) {
            return fail("true or false");
        }
    }
    if (like.is_number_unsigned()) {
        if (!node.Scalar().empty() && node.Scalar()[0] == '-')
            return fail("a non-negative integer");
        const auto value = integral_value<uint64_t>(node);
        return value ? json(*value) : fail("a non-negative integer");
    }
    if (like.is_number_integer()) {
        const auto value = integral_value<int64_t>(node);
        return value ? json(*value) : fail("an integer");
    }
    if (like.is_number_float()) {
        double value = 0;
        try {
            value = node.as<double>();
        } catch (const YAML::BadConversion&) {
            return fail("a number");
        }
        return std::isfinite(value) ? json(value) : fail("a finite number");
    }
    return fail("a value");
}

std::vector<std::string> keys_of(const json& object) {
    std::vector<std::string> keys;
    for (const auto& [key, value] : object.items()) keys.push_back(key);
    return keys;
}

// Reads the mapping `node` into `options`, whose keys and value types are the only ones
// allowed; prefix is the dotted path of `node` for errors.
void read_options(const YAML::Node& node, json& options, const std::string& prefix,
                  const std::string& source) {
    if (!present(node)) return;
    if (!node.IsMap()) throw UserError(source, prefix, "expected a mapping" + line_of(node));
    for (const auto& entry : node) {
        const std::string key = key_text(entry.first);
        if (!options.contains(key)) {
            throw_unknown_key(source, prefix + "." + key, key, keys_of(options),
                              line_of(entry.first));
        }
        if (!present(entry.second)) continue;
        options[key] = read_like(entry.second, options[key], prefix + "." + key, source);
    }
}

// ---- method options as JSON --------------------------------------------------------------

json moe_to_json(const MoeConfig& moe) {
    RunConfig config;
    config.model.moe = moe;
    return to_json(config)["model"]["moe"];
}

MoeConfig moe_from_json(const json& options) {
    json moe = moe_to_json(MoeConfig{});
    for (auto& [key, value] : moe.items()) {
        if (options.contains(key)) value = options[key];
    }
    return run_config_from_json({{"model", {{"moe", moe}}}}, "options").model.moe;
}

json upcycle_defaults(uint64_t seed) {
    const UpcycleOptions d;
    json o = moe_to_json(d.moe);
    o["router_init"] = d.router_init;
    o["expert_init"] = d.expert_init;
    o["noise_std"] = d.noise_std;
    o["drop_ratio"] = d.drop_ratio;
    o["optimizer_state"] = d.optimizer_state;
    o["seed"] = seed;
    return o;
}

// scratch's MoE keys default to upcycle's (the same architecture), when upcycle runs
json scratch_defaults(uint64_t seed, const json* upcycle) {
    json o = moe_to_json(ScratchOptions{}.moe);
    if (upcycle) {
        for (auto& [key, value] : o.items()) value = upcycle->at(key);
    }
    o["seed"] = seed;
    return o;
}

json warmstart_defaults() {
    const WarmstartOptions d;
    return {{"depth_multiplier", d.depth_multiplier},
            {"tiling", d.tiling},
            {"optimizer_state", d.optimizer_state}};
}

// A method's options before the sweep's own: the surgery's defaults, seeded by the sweep.
json method_defaults(Method method, uint64_t seed, const json* upcycle) {
    switch (method) {
        case Method::Upcycle: return upcycle_defaults(seed);
        case Method::Scratch: return scratch_defaults(seed, upcycle);
        case Method::Warmstart: return warmstart_defaults();
        case Method::Dense:
        case Method::Pretrain: break;
    }
    return json::object();
}

// The keys a grid, zip or --set may address; leaves are the defaults (their values unused).
const json& sweep_schema() {
    static const json schema = [] {
        json s = to_json(RunConfig{});
        s["model"].erase("moe");
        s["model"]["preset"] = "";
        s["train"].erase("steps");
        s["pretrain"] = {{"steps", TrainConfig{}.steps}, {"from", ""}};
        json methods = json::object();
        for (const Method m : continuation_methods())
            methods[to_string(m)] = method_defaults(m, 0, nullptr);
        s["continue"] = {{"budget_unit", ""}, {"budgets", ""}, {"methods", methods}};
        return s;
    }();
    return schema;
}

// Throws unless `path` (spelled `key` in the file, at `where`) names a key of the schema.
void check_sweep_path(const std::vector<std::string>& path, const std::string& key,
                      const std::string& source, const std::string& where) {
    if (path.size() >= 2 && path[0] == "train" && path[1] == "steps") {
        throw UserError(source, key, std::string(kTrainStepsHint) + where);
    }
    if (path.size() >= 2 && path[0] == "model" && path[1] == "moe") {
        throw UserError(source, key, std::string(kModelMoeHint) + where);
    }
    const json* node = &sweep_schema();
    for (const auto& part : path) {
        if (!node->is_object()) {
            throw UserError(source, key, "'" + part + "' is below a value, not a section" + where);
        }
        if (!node->contains(part)) throw_unknown_key(source, key, part, keys_of(*node), where);
        node = &node->at(part);
    }
}

RunConfig continuation_run_config(const RunConfig& pretrain, Method method, const json& options) {
    RunConfig config = pretrain;
    if (method == Method::Upcycle)
        config.model.moe = upcycle_options_from_json(options).moe;
    else if (method == Method::Scratch)
        config.model.moe = scratch_options_from_json(options).moe;
    else if (method == Method::Warmstart)
        config.model.layers *= warmstart_options_from_json(options).depth_multiplier;
    return config;
}

json canonical_run_json(const RunConfig& config) {
    json out = to_identity_json(config);
    out.erase("name");  // names are labels, not identity: sweeps share identical trials
    return out;
}

// percent/100 of the pretraining's cost in continuation steps, before rounding; 0 for seconds.
// declared_sunk: the parent checkpoint's FLOPs (pretrain.from) instead of the pretraining's.
double exact_extra_steps(BudgetUnit unit, const RunConfig& pretrain,
                         std::optional<double> declared_sunk, const ModelConfig& continuation,
                         double percent) {
    double steps = 0;
    if (unit == BudgetUnit::Seconds) return 0;
    const double pretrain_steps = static_cast<double>(pretrain.train.steps);
    if (unit == BudgetUnit::Steps) {
        steps = percent / 100.0 * pretrain_steps;
    } else {
        // both runs take batch × context tokens per step, so the tokens cancel
        const double tokens_per_step =
            static_cast<double>(pretrain.train.batch_size) * tokens_per_example(pretrain.model);
        const double sunk = declared_sunk ? *declared_sunk
                                          : flops_per_token(pretrain.model).training *
                                                tokens_per_step * pretrain_steps;
        const double per_step = flops_per_token(continuation).training * tokens_per_step;
        steps = percent / 100.0 * sunk / per_step;
    }
    return steps;
}

// percent/100 of the pretraining's cost, in continuation steps (see steps_for_budget).
std::optional<int64_t> extra_steps(BudgetUnit unit, const RunConfig& pretrain,
                                   std::optional<double> declared_sunk,
                                   const ModelConfig& continuation, double percent) {
    if (unit == BudgetUnit::Seconds) return std::nullopt;
    const double steps = exact_extra_steps(unit, pretrain, declared_sunk, continuation, percent);
    // the fewest whole steps that reach it; the relative slack absorbs rounding in the ratio
    constexpr double kSlack = 1e-12;
    return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(steps * (1.0 - kSlack))));
}

// ---- one point of the sweep ------------------------------------------------------------

struct Axis {
    std::string key;                // as written
    std::vector<std::string> path;  // in the tree
    std::vector<YAML::Node> values;
};

// Rethrows a validate() error about model.moe.* (or model.layers) as one about the method's
// own key, with its line in the file (else the method's line).
[[noreturn]] void rethrow_as_method_error(const UserError& e, const std::string& prefix,
                                          const YAML::Node& method_key,
                                          const YAML::Node& method_node) {
    const std::string moe_prefix = "model.moe.";
    std::string leaf;
    if (e.key().rfind(moe_prefix, 0) == 0)
        leaf = e.key().substr(moe_prefix.size());
    else if (e.key() == "model.layers")
        leaf = "depth_multiplier";
    if (leaf.empty()) throw e;
    const YAML::Node at = key_node(method_node, leaf);
    const std::string where = at.IsDefined() ? line_of(at) : line_of(method_key);
    throw UserError(e.file(), prefix + "." + leaf, e.message() + where);
}

json resolve_method(Method method, const YAML::Node& method_key, const YAML::Node& node,
                    const RunConfig& pretrain, const json* upcycle, const std::string& source) {
    const std::string prefix = "continue.methods." + to_string(method);
    const uint64_t seed = pretrain.train.seed;  // the sweep's seed also seeds the surgery
    json options = method_defaults(method, seed, upcycle);
    read_options(node, options, prefix, source);
    auto where = [&](const std::string& key) {
        const YAML::Node at = key_node(node, key);
        return at.IsDefined() ? line_of(at) : line_of(method_key);
    };
    auto text = [&](const std::string& key) { return options[key].get<std::string>(); };
    if (method == Method::Upcycle || method == Method::Scratch) {
        const int experts = options["experts"].get<int>();
        if (experts < 1) {
            throw UserError(source, prefix + ".experts",
                            "expected at least one expert, found " + std::to_string(experts) +
                                where("experts"));
        }
    }
    if (method == Method::Upcycle) {
        require_choice(text("router_init"), {"normal", "zeros"}, source, prefix + ".router_init",
                       where("router_init"));
        require_choice(text("expert_init"), {"copy", "noise", "drop"}, source,
                       prefix + ".expert_init", where("expert_init"));
        const double noise_std = options["noise_std"].get<double>();
        if (!std::isfinite(noise_std) || noise_std < 0) {
            throw UserError(source, prefix + ".noise_std",
                            "expected a finite non-negative number (σ relative to each tensor's "
                            "std)" +
                                where("noise_std"));
        }
        const double drop_ratio = options["drop_ratio"].get<double>();
        if (!(drop_ratio >= 0 && drop_ratio <= 1)) {
            throw UserError(
                source, prefix + ".drop_ratio",
                "expected a fraction of the hidden neurons in [0, 1]" + where("drop_ratio"));
        }
    }
    if (method == Method::Upcycle || method == Method::Warmstart) {
        require_choice(text("optimizer_state"), {"reset", "copy"}, source,
                       prefix + ".optimizer_state", where("optimizer_state"));
    }
    if (method == Method::Warmstart) {
        const int64_t multiplier = options["depth_multiplier"].get<int64_t>();
        if (multiplier < 2 || multiplier > INT_MAX / pretrain.model.layers) {
            throw UserError(source, prefix + ".depth_multiplier",
                            "expected an integer ≥ 2 (the deeper model has depth_multiplier × " +
                                std::to_string(pretrain.model.layers) + " blocks), found " +
                                std::to_string(multiplier) + where("depth_multiplier"));
        }
        require_choice(text("tiling"), {"stack", "interleave"}, source, prefix + ".tiling",
                       where("tiling"));
    }
    try {
        validate(continuation_run_config(pretrain, method, options), source);
    } catch (const UserError& e) {
        rethrow_as_method_error(e, prefix, method_key, node);
    }
    return options;
}

void read_continue(const YAML::Node& node, SweepPoint& point, const std::string& source) {
    point.budget_unit = BudgetUnit::Flops;
    point.budgets = kDefaultBudgets;
    if (!present(node)) return;
    if (!node.IsMap()) throw UserError(source, "continue", "expected a mapping" + line_of(node));
    for (const auto& entry : node) {
        const std::string key = key_text(entry.first);
        if (!contains(kContinueKeys, key)) {
            throw_unknown_key(source, "continue." + key, key, kContinueKeys, line_of(entry.first));
        }
    }
    const YAML::Node unit = child(node, "budget_unit");
    if (present(unit)) {
        const auto name = read_like(unit, "", "continue.budget_unit", source).get<std::string>();
        const auto value = find_choice<BudgetUnit>(name);
        if (!value) {
            throw UserError(source, "continue.budget_unit",
                            choice_error(choice_names<BudgetUnit>(), name) + line_of(unit));
        }
        point.budget_unit = *value;
    }
    const YAML::Node budgets = child(node, "budgets");
    if (present(budgets)) {
        if (!budgets.IsSequence() || budgets.size() == 0) {
            throw UserError(source, "continue.budgets",
                            "expected a non-empty list of budgets (percent of the pretraining "
                            "cost)" +
                                line_of(budgets));
        }
        point.budgets.clear();
        for (const auto& item : budgets) {
            const double b = read_like(item, 0.0, "continue.budgets", source).get<double>();
            if (!std::isfinite(b) || b <= 0) {
                throw UserError(source, "continue.budgets",
                                "expected budgets > 0 (percent of the pretraining cost), found " +
                                    item.Scalar() + line_of(item));
            }
            point.budgets.push_back(b);
        }
        std::sort(point.budgets.begin(), point.budgets.end());
        point.budgets.erase(std::unique(point.budgets.begin(), point.budgets.end()),
                            point.budgets.end());
    }
}

// The parent checkpoint of pretrain.from: its content hash (once per file and version in a
// process: a sweep's points share it, and hashing a GPT-2 takes a second), cost and step.
ParentCheckpoint parent_checkpoint_file(const std::string& path, const std::string& source,
                                        const std::string& where) {
    if (!std::filesystem::is_regular_file(path)) {
        throw UserError(
            source, "pretrain.from",
            "no such checkpoint file '" + path + "' (make one with upcycle import)" + where);
    }
    static std::mutex mutex;
    static std::map<std::string, ParentCheckpoint> cache;  // by path, size and mtime
    const std::string key =
        std::filesystem::absolute(path).string() + "|" +
        std::to_string(std::filesystem::file_size(path)) + "|" +
        std::to_string(std::filesystem::last_write_time(path).time_since_epoch().count());
    {
        const std::lock_guard<std::mutex> lock(mutex);
        if (const auto it = cache.find(key); it != cache.end()) {
            ParentCheckpoint found = it->second;
            found.path = path;
            return found;
        }
    }
    const TrainingState state = read_training_state(path);
    if (!(state.flops > 0)) {
        throw UserError(path, "upcycle.flops",
                        "the checkpoint records no training FLOPs, so budgets as % of its cost "
                        "mean nothing (import it with --sunk-tokens or --sunk-flops)");
    }
    ParentCheckpoint parent{path, sha256_file(path), state.flops, state.step};
    const std::lock_guard<std::mutex> lock(mutex);
    cache[key] = parent;
    return parent;
}

std::optional<double> declared_sunk(const SweepPoint& point) {
    if (!point.from) return std::nullopt;
    return point.from->sunk_flops;
}

// Refuses budgets (or a pretraining) so large that a method's step counter would leave int64:
// plan_sweep converts each horizon to whole steps and adds the pretraining's.
void check_step_counters(const SweepPoint& point, const YAML::Node& cont,
                         const std::string& source) {
    if (point.budget_unit == BudgetUnit::Seconds) return;
    constexpr double kMaxStepCounter = 0x1p62;  // far inside int64: the sums below stay exact
    for (const Method method : continuation_methods()) {
        const std::string name = to_string(method);
        if (!point.methods.contains(name)) continue;
        const RunConfig run = continuation_run_config(point.pretrain, method, point.methods[name]);
        const double horizon =
            point.budgets.back() + (method == Method::Scratch ? kScratchExtraPercent : 0.0);
        const double base =
            restarts_step_counter(method) ? 0.0 : static_cast<double>(point.pretrain.train.steps);
        const double end = base + exact_extra_steps(point.budget_unit, point.pretrain,
                                                    declared_sunk(point), run.model, horizon);
        if (!(end <= kMaxStepCounter)) {
            throw UserError(source, "continue.budgets",
                            fmt::format("a budget of {:g}% makes {} run to step {:.3g}, beyond "
                                        "what a step counter holds ({:.3g}); expected smaller "
                                        "budgets or pretrain.steps",
                                        horizon, name, end, kMaxStepCounter) +
                                line_of(key_node(cont, "budgets")));
        }
    }
}

SweepPoint resolve_point(const YAML::Node& tree, const std::string& source, const std::string& name,
                         std::optional<uint64_t> seed) {
    SweepPoint point;
    for (const auto& entry : tree) {
        const std::string key = key_text(entry.first);
        if (!contains(kTopLevelKeys, key))
            throw_unknown_key(source, key, key, kTopLevelKeys, line_of(entry.first));
    }
    // the dense pretraining: RunConfig's sections, read and validated by core/config
    YAML::Node run(YAML::NodeType::Map);
    for (const auto& entry : tree) {
        if (contains(kRunSections, key_text(entry.first)))
            run[key_text(entry.first)] = entry.second;
    }
    const YAML::Node train_steps = key_node(child(tree, "train"), "steps");
    if (train_steps.IsDefined())
        throw UserError(source, "train.steps", kTrainStepsHint + line_of(train_steps));
    const YAML::Node model_moe = key_node(child(tree, "model"), "moe");
    if (model_moe.IsDefined())
        throw UserError(source, "model.moe", kModelMoeHint + line_of(model_moe));
    RunConfig pretrain = run_config_from_yaml(run, source);

    json pretrain_options = {{"steps", TrainConfig{}.steps}, {"from", ""}};
    const YAML::Node pretrain_node = child(tree, "pretrain");
    read_options(pretrain_node, pretrain_options, "pretrain", source);
    int64_t steps = pretrain_options["steps"].get<int64_t>();
    if (steps <= 0) {
        throw UserError(source, "pretrain.steps",
                        "expected a positive integer, found " + std::to_string(steps) +
                            line_of(child(pretrain_node, "steps")));
    }
    // what validation sees: a continuation's config from a step-0 parent is still one that runs
    RunConfig checked = pretrain;
    if (const std::string from = pretrain_options["from"].get<std::string>(); !from.empty()) {
        const std::string where = line_of(key_node(pretrain_node, "from"));
        if (key_node(pretrain_node, "steps").IsDefined()) {
            throw UserError(source, "pretrain.steps",
                            "with pretrain.from the parent is that checkpoint: its step counter "
                            "is the checkpoint's, and nothing is pretrained" +
                                line_of(key_node(pretrain_node, "steps")));
        }
        if (present(child(tree, "model"))) {
            throw UserError(source, "model",
                            "with pretrain.from the model is the checkpoint's: leave out the "
                            "model section" +
                                line_of(key_node(tree, "model")));
        }
        point.from = parent_checkpoint_file(from, source, where);
        const RunConfig parent = read_checkpoint_config(from);
        if (parent.model.arch != Arch::Gpt || parent.model.moe.experts > 0) {
            throw UserError(
                source, "pretrain.from",
                "expected a dense GPT checkpoint, found " + describe_model(parent.model) + where);
        }
        pretrain.model = parent.model;
        checked.model = parent.model;
        steps = point.from->step;
        validate(checked, source);  // the sweep's data and training with the checkpoint's model
    }
    pretrain.train.steps = steps;
    checked.train.steps = std::max<int64_t>(steps, 1);
    if (seed) {
        pretrain.train.seed = *seed;
        checked.train.seed = *seed;
    }
    pretrain.name = name;
    point.pretrain = pretrain;

    const YAML::Node cont = child(tree, "continue");
    read_continue(cont, point, source);
    if (point.from && point.budget_unit != BudgetUnit::Flops) {
        throw UserError(source, "continue.budget_unit",
                        "with pretrain.from budgets are % of the checkpoint's declared sunk FLOPs: "
                        "expected flops, found " +
                            to_string(point.budget_unit) + line_of(key_node(cont, "budget_unit")));
    }
    if (schedule_depends_on_horizon(pretrain.train.schedule) &&
        point.budget_unit == BudgetUnit::Seconds) {
        throw UserError(
            source, "continue.budget_unit",
            "a " + to_string(pretrain.train.schedule) +
                " schedule needs its horizon in steps before "
                "the run starts, and a seconds budget is only known while it runs: use "
                "budget_unit flops or steps, or a horizon-free schedule (constant, rsqrt)" +
                line_of(key_node(cont, "budget_unit")));
    }
    const YAML::Node methods = child(cont, "methods");
    if (present(methods)) {
        if (!methods.IsMap()) {
            throw UserError(source, "continue.methods",
                            "expected a mapping of methods" + line_of(methods));
        }
        for (const auto& entry : methods) {
            const std::string method = key_text(entry.first);
            if (!continuation_method(method)) {
                throw_unknown_key(source, "continue.methods." + method, method,
                                  continuation_method_names(), line_of(entry.first));
            }
        }
        const std::string upcycle_name = to_string(Method::Upcycle);
        for (const Method method : continuation_methods()) {
            const std::string name = to_string(method);
            const YAML::Node key = key_node(methods, name);
            if (!key.IsDefined()) continue;
            const json* upcycle =
                point.methods.contains(upcycle_name) ? &point.methods[upcycle_name] : nullptr;
            point.methods[name] =
                resolve_method(method, key, child(methods, name), checked, upcycle, source);
        }
    }
    check_step_counters(point, cont, source);
    return point;
}

std::vector<Axis> read_axes(const YAML::Node& map, const std::string& section,
                            const YAML::Node& base, const std::string& source) {
    std::vector<Axis> axes;
    if (!map.IsMap()) {
        throw UserError(source, section,
                        "expected a mapping of dotted keys to lists of values" + line_of(map));
    }
    for (const auto& entry : map) {
        Axis axis;
        axis.key = key_text(entry.first);
        axis.path = sweep_path(axis.key);
        const std::string where = line_of(entry.first);
        const std::string named = section + "." + axis.key;
        if (axis.key.empty() || contains(axis.path, "")) {
            throw UserError(source, named, "expected a dotted key such as model.channels" + where);
        }
        check_sweep_path(axis.path, named, source, where);
        if (axis.path.size() > 3 && axis.path[0] == "continue" && axis.path[1] == "methods" &&
            !key_node(child(child(base, "continue"), "methods"), axis.path[2]).IsDefined()) {
            throw UserError(source, named,
                            "this sweep does not run " + axis.path[2] +
                                ": add it under "
                                "continue.methods" +
                                where);
        }
        if (!entry.second.IsSequence()) {
            throw UserError(source, named, "expected a list of values" + line_of(entry.second));
        }
        if (entry.second.size() == 0) {
            throw UserError(
                source, named,
                "an empty list: an axis needs at least one value" + line_of(entry.second));
        }
        for (const auto& value : entry.second) axis.values.push_back(value);
        axes.push_back(std::move(axis));
    }
    return axes;
}

std::string path_text(const std::vector<std::string>& path) { return join(path, "."); }

}  // namespace

// ---- public ---------------------------------------------------------------------------------

namespace {

// The sweep's points from its tree (overrides applied); origin(key) says where a key's value
// came from, for errors about a point (whose tree has no lines).
SweepSpec expand_sweep(const YAML::Node& root, const std::string& source,
                       const std::function<std::string(const std::string&)>& origin) {
    for (const auto& entry : root) {
        const std::string key = key_text(entry.first);
        if (!contains(kTopLevelKeys, key))
            throw_unknown_key(source, key, key, kTopLevelKeys, line_of(entry.first));
    }

    SweepSpec spec;
    spec.source = source;
    spec.name = std::filesystem::path(source).stem().string();
    if (spec.name.empty()) spec.name = "sweep";
    const YAML::Node name = child(root, "name");
    if (present(name)) spec.name = read_like(name, "", "name", source).get<std::string>();

    // the axes: grid (cartesian), zip groups (advanced together), seeds
    std::vector<Axis> grid;
    const YAML::Node grid_node = child(root, "grid");
    if (present(grid_node)) grid = read_axes(grid_node, "grid", root, source);
    std::vector<std::vector<Axis>> zips;
    const YAML::Node zip_node = child(root, "zip");
    if (present(zip_node)) {
        std::vector<YAML::Node> groups;
        if (zip_node.IsMap())
            groups.push_back(zip_node);
        else if (zip_node.IsSequence())
            for (const auto& g : zip_node) groups.push_back(g);
        else
            throw UserError(
                source, "zip",
                "expected a list of mappings of keys to equally long lists" + line_of(zip_node));
        for (const auto& group_node : groups) {
            auto group = read_axes(group_node, "zip", root, source);
            for (const auto& axis : group) {
                if (axis.values.size() != group.front().values.size()) {
                    throw UserError(source, "zip." + axis.key,
                                    "zip lists must be equally long: '" + group.front().key +
                                        "' has " + std::to_string(group.front().values.size()) +
                                        " values" +
                                        line_of(key_node(group_node, group.front().key)) + ", '" +
                                        axis.key + "' has " + std::to_string(axis.values.size()) +
                                        line_of(key_node(group_node, axis.key)));
                }
            }
            zips.push_back(std::move(group));
        }
    }
    std::vector<std::optional<uint64_t>> seeds;
    const YAML::Node seeds_node = child(root, "seeds");
    if (present(seeds_node)) {
        if (!seeds_node.IsSequence() || seeds_node.size() == 0) {
            throw UserError(source, "seeds",
                            "expected a non-empty list of seeds" + line_of(seeds_node));
        }
        for (const auto& item : seeds_node) {
            seeds.emplace_back(read_like(item, json(uint64_t{0}), "seeds", source).get<uint64_t>());
        }
    } else {
        seeds.emplace_back(std::nullopt);  // train.seed as given
    }
    // every key at most once, and seeds: owns train.seed
    std::set<std::string> varied;
    std::vector<const Axis*> all_axes;
    for (const auto& axis : grid) all_axes.push_back(&axis);
    for (const auto& group : zips)
        for (const auto& axis : group) all_axes.push_back(&axis);
    for (const Axis* axis : all_axes) {
        const std::string path = path_text(axis->path);
        if (!varied.insert(path).second) {
            throw UserError(source, axis->key,
                            "is varied twice (by grid and zip, or twice in them)");
        }
        if (present(seeds_node) && path == "train.seed") {
            throw UserError(source, axis->key, "train.seed is set by seeds:" + line_of(seeds_node));
        }
        spec.axes.push_back(axis->key);
    }
    if (present(seeds_node)) spec.axes.push_back("train.seed");

    std::size_t count = seeds.size();
    for (const auto& axis : grid) count *= axis.values.size();
    for (const auto& group : zips) count *= group.front().values.size();
    if (count > kMaxSweepPoints) {
        throw UserError(source, "grid",
                        "the sweep expands to " + std::to_string(count) + " points, more than " +
                            std::to_string(kMaxSweepPoints));
    }

    // expand: seeds outermost, then the grid in file order, then the zip groups; the last
    // axis varies fastest
    std::vector<std::size_t> sizes;
    for (const auto& axis : grid) sizes.push_back(axis.values.size());
    for (const auto& group : zips) sizes.push_back(group.front().values.size());
    for (const auto& seed : seeds) {
        std::vector<std::size_t> index(sizes.size(), 0);
        while (true) {
            YAML::Node tree = root;
            std::vector<std::pair<std::string, std::string>> assignments;
            auto assign = [&](const Axis& axis, std::size_t i) {
                tree.reset(with_value(tree, axis.path, 0, axis.values[i], source));
                assignments.emplace_back(axis.key, flow_text(axis.values[i]));
            };
            std::size_t a = 0;
            for (const auto& axis : grid) assign(axis, index[a++]);
            for (const auto& group : zips) {
                for (const auto& axis : group) assign(axis, index[a]);
                ++a;
            }
            if (seed) assignments.emplace_back("train.seed", std::to_string(*seed));
            try {
                SweepPoint point = resolve_point(tree, source, spec.name, seed);
                point.assignments = std::move(assignments);
                spec.points.push_back(std::move(point));
            } catch (const UserError& e) {
                if (assignments.empty()) throw;
                std::vector<std::string> parts;
                for (const auto& [k, v] : assignments) parts.push_back(k + "=" + v);
                const std::string where =
                    e.file() == source && !has_origin(e.message()) ? origin(e.key()) : "";
                throw UserError(
                    e.file(), e.key(),
                    e.message() + where + " [at the sweep point " + join(parts, ", ") + "]");
            }
            // odometer
            std::size_t d = sizes.size();
            while (d > 0 && ++index[d - 1] == sizes[d - 1]) index[--d] = 0;
            if (d == 0) break;
        }
    }
    return spec;
}

}  // namespace

SweepSpec parse_sweep(const std::string& yaml_text, const std::string& source,
                      const std::vector<std::string>& overrides) {
    const YAML::Node original = parse_yaml_mapping(yaml_text, source);
    std::vector<AppliedOverride> applied;
    const auto override_path = [](const std::string& key) {
        std::vector<std::string> path = key.rfind("grid.", 0) == 0
                                            ? std::vector<std::string>{"grid", key.substr(5)}
                                            : sweep_path(key);
        if (contains(path, ""))
            throw UserError("--set", key, "expected a dotted key such as train.lr");
        return path;
    };
    const YAML::Node root = apply_overrides(original, overrides, override_path, applied);
    const auto origin = [&](const std::string& key) {
        return origin_of(sweep_path(key), original, applied);
    };
    try {
        return expand_sweep(root, source, origin);
    } catch (const UserError& e) {
        if (e.file() != source || has_origin(e.message())) throw;
        throw UserError(e.file(), e.key(), e.message() + origin(e.key()));
    }
}

SweepSpec load_sweep(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
    return parse_sweep(read_yaml_file(file, "sweep"), file.string(), overrides);
}

std::string trial_hash(const nlohmann::json& canonical_config) {
    return sha256_hex(canonical_config.dump());
}

bool restarts_step_counter(Method method) { return method == Method::Scratch; }

std::vector<PlannedTrial> plan_sweep(const SweepSpec& spec) {
    std::vector<PlannedTrial> trials;
    std::set<std::string> seen;
    auto add = [&](PlannedTrial trial) {
        if (seen.insert(trial.hash).second) trials.push_back(std::move(trial));
    };
    for (const SweepPoint& point : spec.points) {
        PlannedTrial pretrain;
        pretrain.method = Method::Pretrain;
        pretrain.config = {{"method", to_string(Method::Pretrain)},
                           {"run", canonical_run_json(point.pretrain)}};
        json identity = pretrain.config;
        if (point.from) {
            const ParentCheckpoint& from = *point.from;
            identity["from"] = {
                {"sha256", from.sha256}, {"sunk_flops", from.sunk_flops}, {"step", from.step}};
            pretrain.config["from"] = identity["from"];
            pretrain.config["from"]["path"] = from.path;  // where it is, not what it is
        }
        pretrain.hash = trial_hash(identity);
        const std::string parent = pretrain.hash;
        add(std::move(pretrain));

        const bool one_per_budget = schedule_depends_on_horizon(point.pretrain.train.schedule);
        for (const Method method : continuation_methods()) {
            const std::string name = to_string(method);
            if (!point.methods.contains(name)) continue;
            const json& options = point.methods.at(name);
            RunConfig run = continuation_run_config(point.pretrain, method, options);
            std::vector<double> milestones = point.budgets;
            if (method == Method::Scratch)
                milestones.push_back(milestones.back() + kScratchExtraPercent);
            std::vector<std::vector<double>> groups;
            if (one_per_budget)
                for (double m : milestones) groups.push_back({m});
            else
                groups.push_back(milestones);
            for (const auto& group : groups) {
                const double horizon = group.back();
                const auto extra = extra_steps(point.budget_unit, point.pretrain,
                                               declared_sunk(point), run.model, horizon);
                run.train.steps = !extra ? 0
                                  : restarts_step_counter(method)
                                      ? *extra
                                      : point.pretrain.train.steps + *extra;
                PlannedTrial trial;
                trial.method = method;
                trial.parent_hash = parent;
                trial.budget_unit = point.budget_unit;
                trial.milestones = group;
                trial.horizon_percent = horizon;
                trial.config = {{"method", name},
                                {"run", canonical_run_json(run)},
                                {"options", options},
                                {"budget",
                                 {{"unit", point.budget_unit},
                                  {"milestones", group},
                                  {"horizon_percent", horizon}}},
                                {"parent", parent}};
                trial.hash = trial_hash(trial.config);
                add(std::move(trial));
            }
        }
    }
    return trials;
}

RunConfig trial_run_config(const PlannedTrial& trial) {
    RunConfig config = run_config_from_json(trial.config.at("run"), "trial " + trial.hash);
    config.name = to_string(trial.method) + "-" + trial.hash.substr(0, 12);
    return config;
}

UpcycleOptions upcycle_options_from_json(const nlohmann::json& o) {
    UpcycleOptions u;
    u.moe = moe_from_json(o);
    u.router_init = o.value("router_init", u.router_init);
    u.expert_init = o.value("expert_init", u.expert_init);
    u.noise_std = o.value("noise_std", u.noise_std);
    u.drop_ratio = o.value("drop_ratio", u.drop_ratio);
    u.optimizer_state = o.value("optimizer_state", u.optimizer_state);
    u.seed = o.value("seed", u.seed);
    return u;
}

ScratchOptions scratch_options_from_json(const nlohmann::json& o) {
    ScratchOptions s;
    s.moe = moe_from_json(o);
    s.seed = o.value("seed", s.seed);
    return s;
}

WarmstartOptions warmstart_options_from_json(const nlohmann::json& o) {
    WarmstartOptions w;
    w.depth_multiplier = o.value("depth_multiplier", w.depth_multiplier);
    w.tiling = o.value("tiling", w.tiling);
    w.optimizer_state = o.value("optimizer_state", w.optimizer_state);
    return w;
}

ContinuationOptions continuation_options(const PlannedTrial& trial) {
    ContinuationOptions options;
    const json& o = trial.config.at("options");
    if (trial.method == Method::Upcycle) options.upcycle = upcycle_options_from_json(o);
    if (trial.method == Method::Scratch) options.scratch = scratch_options_from_json(o);
    if (trial.method == Method::Warmstart) options.warmstart = warmstart_options_from_json(o);
    return options;
}

std::optional<int64_t> steps_for_budget(const PlannedTrial& trial, const PlannedTrial& parent,
                                        double percent) {
    UPCYCLE_ASSERT(trial.parent_hash == parent.hash && parent.method == Method::Pretrain,
                   "steps_for_budget needs a continuation and its pretraining parent");
    const RunConfig pretrain =
        run_config_from_json(parent.config.at("run"), "trial " + parent.hash);
    const RunConfig run = run_config_from_json(trial.config.at("run"), "trial " + trial.hash);
    std::optional<double> sunk;
    if (const auto from = parent_checkpoint(parent)) sunk = from->sunk_flops;
    return extra_steps(trial.budget_unit, pretrain, sunk, run.model, percent);
}

std::vector<Milestone> trial_milestones(const PlannedTrial& trial, const PlannedTrial& parent,
                                        double parent_seconds) {
    const int64_t base = restarts_step_counter(trial.method)
                             ? 0
                             : parent.config.at("run").at("train").at("steps").get<int64_t>();
    std::vector<Milestone> milestones;
    for (const double percent : trial.milestones) {
        Milestone m;
        m.percent = percent;
        if (trial.budget_unit == BudgetUnit::Seconds) {
            m.seconds = percent / 100.0 * parent_seconds;
        } else {
            m.step = base + steps_for_budget(trial, parent, percent).value();
        }
        milestones.push_back(m);
    }
    return milestones;
}

std::optional<ParentCheckpoint> parent_checkpoint(const PlannedTrial& pretrain) {
    if (pretrain.method != Method::Pretrain || !pretrain.config.contains("from"))
        return std::nullopt;
    const json& from = pretrain.config.at("from");
    try {
        return ParentCheckpoint{
            from.at("path").get<std::string>(), from.at("sha256").get<std::string>(),
            from.at("sunk_flops").get<double>(), from.at("step").get<int64_t>()};
    } catch (const nlohmann::json::exception& e) {
        throw UserError("trial " + pretrain.hash, "from",
                        std::string("not a planned parent checkpoint: ") + e.what());
    }
}

PlannedTrial planned_trial(const std::string& hash, const nlohmann::json& config) {
    const std::string source = "trial " + hash;
    PlannedTrial planned;
    planned.hash = hash;
    planned.config = config;
    try {
        planned.method =
            parse_choice<Method>(config.at("method").get<std::string>(), source, "method");
        if (config.contains("parent")) planned.parent_hash = config.at("parent").get<std::string>();
        if (config.contains("budget")) {
            const json& budget = config.at("budget");
            planned.budget_unit = parse_choice<BudgetUnit>(budget.at("unit").get<std::string>(),
                                                           source, "budget.unit");
            planned.milestones = budget.at("milestones").get<std::vector<double>>();
            planned.horizon_percent = budget.at("horizon_percent").get<double>();
        }
    } catch (const nlohmann::json::exception& e) {
        throw UserError(source, "config", std::string("not a planned trial's config: ") + e.what());
    }
    return planned;
}

}  // namespace upcycle
