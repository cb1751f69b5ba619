#pragma once
// Sweeps: one YAML file describes a dense pretraining (the sunk cost) and the continuation
// methods run from its checkpoint — dense, upcycle, scratch, warmstart — at extra budgets
// given as percentages of that sunk cost, over a grid of configurations and seeds.
//
//   parse_sweep  reads the file (with --set overrides), expands grid × zip × seeds and
//                resolves and checks every point before anything runs: unknown keys, wrong
//                types and impossible combinations throw UserError naming the file, the key,
//                its line and a "did you mean" where one fits.
//   plan_sweep   turns the points into trials. A trial's identity is the SHA-256 of its fully
//                resolved canonical config (every default filled in, keys sorted, the sweep's
//                name left out), so identical trials — within a sweep or across sweeps —
//                share one hash and are run once. Each pretraining trial is the parent of its
//                continuations.
//
// The format is documented in experiments/README.md.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/surgery/continuation.h"
#include "core/train.h"

namespace upcycle {

// The continuation methods, in the order plan_sweep emits them.
inline const std::vector<Method>& continuation_methods() {
    static const std::vector<Method> methods{Method::Dense, Method::Upcycle, Method::Scratch,
                                             Method::Warmstart};
    return methods;
}

// A sweep's parent that was not trained here (pretrain.from: a checkpoint made by
// `upcycle import`, or any dense GPT checkpoint): its content and declared cost.
struct ParentCheckpoint {
    std::string path;       // as the sweep names it (not part of any trial's identity)
    std::string sha256;     // of the file: the parent's identity
    double sunk_flops = 0;  // its state.flops: the cost budgets are percentages of
    int64_t step = 0;       // its step counter: continuations count on from here
};

// One point of a sweep (one combination of grid values, zip entries and seed), resolved.
struct SweepPoint {
    // The grid/zip keys and the seed that make this point, as key and value text.
    std::vector<std::pair<std::string, std::string>> assignments;
    RunConfig pretrain;  // the dense pretraining: train.steps = pretrain.steps
    // pretrain.from: the parent is this checkpoint instead of a pretraining (pretrain's model is
    // the checkpoint's and its train.steps the checkpoint's step, which may be 0)
    std::optional<ParentCheckpoint> from;
    BudgetUnit budget_unit = BudgetUnit::Flops;
    std::vector<double> budgets;  // extra budgets, percent of the sunk cost; ascending, distinct
    // The methods that run, by name, each with its options fully resolved (the canonical
    // "options"):
    // dense {}; upcycle {MoE keys, router_init, expert_init, noise_std, drop_ratio,
    // optimizer_state, seed}; scratch {MoE keys, seed}; warmstart {depth_multiplier, tiling,
    // optimizer_state}.
    nlohmann::json methods = nlohmann::json::object();
};

struct SweepSpec {
    std::string source;              // the file, as errors name it
    std::string name;                // `name:`, else the file's stem
    std::vector<std::string> axes;   // the keys the sweep varies (grid, zip, then train.seed)
    std::vector<SweepPoint> points;  // seeds (outermost) × grid (file order) × zip groups
};

// Reads a sweep from YAML text; source names it in errors. Overrides are "key.path=value"
// (the value is YAML), applied to the tree before anything else; "grid.KEY=[…]" sets a grid
// axis, and a path may start with a method name (upcycle.experts=16 is
// continue.methods.upcycle.experts=16).
SweepSpec parse_sweep(const std::string& yaml_text, const std::string& source,
                      const std::vector<std::string>& overrides = {});
SweepSpec load_sweep(const std::filesystem::path& file,
                     const std::vector<std::string>& overrides = {});

struct PlannedTrial {
    std::string hash;  // sha256_hex(config.dump())
    Method method = Method::Pretrain;
    // The fully resolved canonical config:
    //   pretrain:     {"method", "run"}, and with pretrain.from "from": {"path", "sha256",
    //                 "sunk_flops", "step"} (the hash leaves out "path": a moved file is the
    //                 same parent; its content is not)
    //   continuation: {"method", "run", "options", "budget": {"unit", "milestones",
    //                  "horizon_percent"}, "parent"}
    // "run" is to_json(RunConfig) without "name", with the method's architecture (upcycle and
    // scratch: model.moe filled; warmstart: layers × depth_multiplier) and train.steps = the
    // step counter at which the trial ends: pretrain.steps + the extra steps for methods that
    // keep the dense run's counter (dense, upcycle, warmstart), the extra steps alone for
    // scratch (it restarts at 0), and 0 with budget_unit seconds (the runner stops on time).
    nlohmann::json config;
    std::string parent_hash;                     // "" for pretrain
    BudgetUnit budget_unit = BudgetUnit::Flops;  // what a continuation's budgets count
    std::vector<double> milestones;              // budget percents at which to evaluate, ascending
    double horizon_percent = 0;                  // the budget the trial runs to (0 for pretrain)
};

// The parent checkpoint of a pretrain trial planned with pretrain.from (nullopt otherwise).
std::optional<ParentCheckpoint> parent_checkpoint(const PlannedTrial& pretrain);

// A planned trial read back from its hash and canonical config (as the store keeps them).
// Throws UserError (file "trial HASH") when the config is not one plan_sweep writes.
PlannedTrial planned_trial(const std::string& hash, const nlohmann::json& canonical_config);

// grid × zip × seeds → trials, parents before children, duplicates (same hash) dropped with
// the first kept. Per point: one pretraining trial, then per method (in
// continuation_methods() order): with a horizon-free schedule (constant, rsqrt) one trial
// evaluated at every budget; with a horizon-dependent one (cosine) one trial per budget.
// scratch also runs to max(budgets) + 100 (it has no sunk cost), so the crossover with
// upcycling is visible.
std::vector<PlannedTrial> plan_sweep(const SweepSpec& spec);

// sha256_hex of the canonical JSON text.
std::string trial_hash(const nlohmann::json& canonical_config);

// Whether the method restarts the training step counter at 0 (scratch) rather than keeping
// the dense run's (its LR schedule warms up again).
bool restarts_step_counter(Method method);

// The trial's run config (config["run"]), named "<method>-<first 12 hex digits of hash>".
RunConfig trial_run_config(const PlannedTrial& trial);
// A continuation's options (config["options"]) as the surgery functions take them.
UpcycleOptions upcycle_options_from_json(const nlohmann::json& options);
ScratchOptions scratch_options_from_json(const nlohmann::json& options);
WarmstartOptions warmstart_options_from_json(const nlohmann::json& options);
// A continuation trial's options, for make_continuation (the method's own member filled).
ContinuationOptions continuation_options(const PlannedTrial& trial);

// The number of continuation steps (counted from the checkpoint, not the step counter) that
// spend `percent` % of the parent pretraining's cost:
//   flops:   the fewest steps whose training FLOPs (flops_per_token(continuation model)
//            .training × batch × context per step) reach percent/100 × the pretraining's
//            (flops_per_token(dense).training × batch × context × pretrain steps, or the
//            parent checkpoint's declared sunk FLOPs with pretrain.from);
//   steps:   percent/100 × pretrain steps, rounded up;
//   seconds: only known at run time: nullopt.
std::optional<int64_t> steps_for_budget(const PlannedTrial& trial, const PlannedTrial& parent,
                                        double percent);

// A continuation's budget milestones for the trainer: for flops and steps budgets the step
// counter at which each is reached (the parent's train.steps + steps_for_budget, or
// steps_for_budget alone for a method that restarts the counter); for seconds budgets the
// training seconds since the trial's start, percent/100 × parent_seconds (the parent's wall
// time, known once it has run).
std::vector<Milestone> trial_milestones(const PlannedTrial& trial, const PlannedTrial& parent,
                                        double parent_seconds);

}  // namespace upcycle
