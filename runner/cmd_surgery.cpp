// upcycle surgery --method upcycle|warmstart|scratch --in DENSE --out OUT [options]
// A dense checkpoint becomes an MoE (upcycle), a deeper dense model (warmstart) or the same
// MoE architecture from random init (scratch); see core/surgery/*.h.
#include <algorithm>
#include <filesystem>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/surgery/continuation.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

// The methods `surgery` makes (dense continuation needs none).
const std::vector<Method> kSurgeryMethods = {Method::Upcycle, Method::Warmstart, Method::Scratch};

struct SurgeryArgs {
    std::string method_name;
    Method method = Method::Upcycle;  // parsed from method_name
    std::string in;
    std::string out;
    UpcycleOptions upcycle;  // its moe is also the scratch architecture
    // the MoE choices, parsed into upcycle.moe
    std::string router = to_string(upcycle.moe.router);
    std::string combine = to_string(upcycle.moe.combine);
    std::string priority = to_string(upcycle.moe.priority);
    int depth_multiplier = 2;
    std::string tiling = "stack";
    // the options given on the command line, to refuse those another method ignores
    std::map<std::string, CLI::Option*> given;
};

// The surgery functions name bad options by their config key; the command line names them
// by flag.
const std::map<std::string, std::string>& option_for_key() {
    static const std::map<std::string, std::string> map = {
        {"model.moe.experts", "--experts"},
        {"model.moe.layers", "--layers"},
        {"model.moe.router", "--router"},
        {"model.moe.k", "--k"},
        {"model.moe.capacity_factor", "--capacity-factor"},
        {"model.moe.eval_capacity_factor", "--eval-capacity-factor"},
        {"model.moe.combine", "--combine"},
        {"model.moe.priority", "--priority"},
        {"model.moe.aux_loss_coef", "--aux-loss-coef"},
        {"model.moe.z_loss_coef", "--z-loss-coef"},
        {"router_init", "--router-init"},
        {"expert_init", "--init"},
        {"noise_std", "--noise-std"},
        {"drop_ratio", "--drop-ratio"},
        {"optimizer_state", "--optimizer-state"},
        {"depth_multiplier", "--depth-multiplier"},
        {"tiling", "--tiling"},
    };
    return map;
}

// An option error (file "") under its command-line name; anything else unchanged.
[[noreturn]] void rethrow_as_option_error(const UserError& e) {
    const auto it = option_for_key().find(e.key());
    if (!e.file().empty() || it == option_for_key().end()) throw e;
    const std::string prefix = "'" + e.key() + "': ";
    std::string message = e.what();
    if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
    throw UserError("", it->second, message);
}

// Options that only some methods read: giving one to another method is a mistake.
void refuse_unused_options(const SurgeryArgs& args) {
    const std::vector<std::string> moe = {"--experts",         "--layers",
                                          "--router",          "--k",
                                          "--capacity-factor", "--eval-capacity-factor",
                                          "--combine",         "--priority",
                                          "--aux-loss-coef",   "--z-loss-coef"};
    std::map<std::string, std::vector<Method>> users;  // option → methods that read it
    for (const auto& o : moe) users[o] = {Method::Upcycle, Method::Scratch};
    for (const char* o : {"--init", "--noise-std", "--drop-ratio", "--router-init"})
        users[o] = {Method::Upcycle};
    users["--optimizer-state"] = {Method::Upcycle, Method::Warmstart};
    users["--depth-multiplier"] = {Method::Warmstart};
    users["--tiling"] = {Method::Warmstart};
    users["--seed"] = {Method::Upcycle, Method::Scratch};
    for (const auto& [option, methods] : users) {
        const CLI::Option* given = args.given.at(option);
        if (given->count() == 0) continue;
        if (std::find(methods.begin(), methods.end(), args.method) == methods.end()) {
            std::vector<std::string> names;
            for (const Method m : methods) names.push_back(to_string(m));
            throw UserError("", option,
                            fmt::format("applies to --method {} only, not {}",
                                        fmt::join(names, " or "), to_string(args.method)));
        }
    }
    const std::string& init = args.upcycle.expert_init;
    if (args.given.at("--noise-std")->count() > 0 && init != "noise") {
        throw UserError("", "--noise-std", "applies to --init noise only, not " + init);
    }
    if (args.given.at("--drop-ratio")->count() > 0 && init != "drop") {
        throw UserError("", "--drop-ratio", "applies to --init drop only, not " + init);
    }
}

std::string blocks_text(const std::vector<int>& blocks) {
    return fmt::format("{}", fmt::join(blocks, ","));
}

int64_t weights_of(const Checkpoint& c) {
    int64_t total = 0;
    for (const auto& name : c.file.order) {
        if (name.rfind("optimizer.", 0) != 0)
            total += static_cast<int64_t>(c.file.tensors.at(name).data.size());
    }
    return total;
}

// The method and the MoE choices, from their words on the command line.
void parse_choices(SurgeryArgs& args) {
    std::vector<std::string> names;
    for (const Method m : kSurgeryMethods) names.push_back(to_string(m));
    const auto method = find_choice<Method>(args.method_name);
    if (!method || std::find(kSurgeryMethods.begin(), kSurgeryMethods.end(), *method) ==
                       kSurgeryMethods.end()) {
        throw_bad_choice("", "--method", names, args.method_name);
    }
    args.method = *method;
    MoeConfig& moe = args.upcycle.moe;
    moe.router = parse_choice<RouterKind>(args.router, "", "--router");
    moe.combine = parse_choice<Combine>(args.combine, "", "--combine");
    moe.priority = parse_choice<Priority>(args.priority, "", "--priority");
}

int run_surgery(SurgeryArgs& args) {
    parse_choices(args);
    refuse_unused_options(args);
    if (!std::filesystem::exists(args.in)) throw UserError(args.in, "--in", "no such file");
    if (std::filesystem::exists(args.out) && std::filesystem::equivalent(args.in, args.out)) {
        throw UserError(args.out, "--out", "is the input checkpoint; write the result elsewhere");
    }
    const Checkpoint dense = read_checkpoint(args.in);
    auto backend = make_backend("cpu");
    Checkpoint result;
    std::string what;
    ContinuationOptions options;
    options.upcycle = args.upcycle;
    options.scratch = {args.upcycle.moe, args.upcycle.seed};
    options.warmstart = {args.depth_multiplier, args.tiling, args.upcycle.optimizer_state};
    try {
        result = make_continuation(args.method, options, dense, *backend);
    } catch (const UserError& e) {
        rethrow_as_option_error(e);
    }
    const ModelConfig& m = result.config.model;
    if (args.method == Method::Warmstart) {
        what = fmt::format("{} → {} blocks ({}), optimizer {}", dense.config.model.layers, m.layers,
                           args.tiling, args.upcycle.optimizer_state);
    } else {
        what = fmt::format("E={} {} k={} on blocks {}", m.moe.experts, to_string(m.moe.router),
                           m.moe.k, blocks_text(moe_layer_indices(m)));
        if (args.method == Method::Upcycle) {
            what += fmt::format(", experts {}, router {}, optimizer {}", args.upcycle.expert_init,
                                args.upcycle.router_init, args.upcycle.optimizer_state);
        } else {
            what += fmt::format(", random init seed {}", args.upcycle.seed);
        }
    }
    const std::filesystem::path out(args.out);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    write_checkpoint(out, result, *backend);
    fmt::print("surgery {}: {} → {} parameters | {} | step {} | {}\n", to_string(args.method),
               format_count(static_cast<double>(weights_of(dense))),
               format_count(static_cast<double>(weights_of(result))), what, result.state.step,
               args.out);
    return 0;
}

}  // namespace

Command add_surgery_command(CLI::App& app) {
    auto args = std::make_shared<SurgeryArgs>();
    UpcycleOptions& u = args->upcycle;
    MoeConfig& moe = u.moe;
    auto* sub =
        app.add_subcommand("surgery",
                           "Turn a dense checkpoint into an MoE (upcycle), a deeper dense model "
                           "(warmstart) or the same MoE from random init (scratch)");
    sub->add_option("--method", args->method_name, "upcycle | warmstart | scratch")->required();
    sub->add_option("--in", args->in, "dense checkpoint (.safetensors)")->required();
    sub->add_option("--out", args->out, "output checkpoint (.safetensors)")->required();
    auto& g = args->given;
    g["--experts"] = sub->add_option("--experts", moe.experts, "experts E")->capture_default_str();
    g["--layers"] = sub->add_option("--layers", moe.layers, "MoE blocks: every_other | all | i,j,…")
                        ->capture_default_str();
    g["--router"] =
        sub->add_option("--router", args->router, "topk | expert_choice (refused in a GPT)")
            ->capture_default_str();
    g["--k"] = sub->add_option("--k", moe.k, "experts per token (topk)")->capture_default_str();
    g["--capacity-factor"] = sub->add_option("--capacity-factor", moe.capacity_factor,
                                             "training capacity factor (≤ 0: no limit)")
                                 ->capture_default_str();
    g["--eval-capacity-factor"] =
        sub->add_option("--eval-capacity-factor", moe.eval_capacity_factor,
                        "evaluation capacity factor (≤ 0: no limit)")
            ->capture_default_str();
    g["--combine"] = sub->add_option("--combine", args->combine, "softmax_topk | renormalized")
                         ->capture_default_str();
    g["--priority"] = sub->add_option("--priority", args->priority, "token_order | probability")
                          ->capture_default_str();
    g["--aux-loss-coef"] =
        sub->add_option("--aux-loss-coef", moe.aux_loss_coef, "load-balancing loss coefficient")
            ->capture_default_str();
    g["--z-loss-coef"] =
        sub->add_option("--z-loss-coef", moe.z_loss_coef, "router z-loss coefficient")
            ->capture_default_str();
    g["--init"] = sub->add_option("--init", u.expert_init, "expert init: copy | noise | drop")
                      ->capture_default_str();
    g["--noise-std"] = sub->add_option("--noise-std", u.noise_std,
                                       "noise σ, relative to each tensor's std (--init noise)")
                           ->capture_default_str();
    g["--drop-ratio"] = sub->add_option("--drop-ratio", u.drop_ratio,
                                        "fraction of hidden neurons re-initialised (--init drop)")
                            ->capture_default_str();
    g["--router-init"] =
        sub->add_option("--router-init", u.router_init, "normal (std 0.02) | zeros")
            ->capture_default_str();
    g["--optimizer-state"] =
        sub->add_option("--optimizer-state", u.optimizer_state, "reset | copy (upcycle, warmstart)")
            ->capture_default_str();
    g["--depth-multiplier"] =
        sub->add_option("--depth-multiplier", args->depth_multiplier, "warmstart: blocks × M")
            ->capture_default_str();
    g["--tiling"] = sub->add_option("--tiling", args->tiling, "warmstart: stack | interleave")
                        ->capture_default_str();
    g["--seed"] = sub->add_option("--seed", u.seed, "router / noise / drop / scratch init seed")
                      ->capture_default_str();
    return [args] { return run_surgery(*args); };
}

}  // namespace upcycle::cli
