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
#include "core/surgery/scratch.h"
#include "core/surgery/upcycle.h"
#include "core/surgery/warmstart.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct SurgeryArgs {
    std::string method;
    std::string in;
    std::string out;
    UpcycleOptions upcycle;  // its moe is also the scratch architecture
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
    const std::vector<std::string> moe = {"--experts", "--layers", "--router", "--k",
                                          "--capacity-factor", "--eval-capacity-factor",
                                          "--combine", "--priority", "--aux-loss-coef",
                                          "--z-loss-coef"};
    std::map<std::string, std::vector<std::string>> users;  // option → methods that read it
    for (const auto& o : moe) users[o] = {"upcycle", "scratch"};
    for (const char* o : {"--init", "--noise-std", "--drop-ratio", "--router-init"}) users[o] = {"upcycle"};
    users["--optimizer-state"] = {"upcycle", "warmstart"};
    users["--depth-multiplier"] = {"warmstart"};
    users["--tiling"] = {"warmstart"};
    users["--seed"] = {"upcycle", "scratch"};
    for (const auto& [option, methods] : users) {
        const CLI::Option* given = args.given.at(option);
        if (given->count() == 0) continue;
        if (std::find(methods.begin(), methods.end(), args.method) == methods.end()) {
            throw UserError("", option,
                            fmt::format("applies to --method {} only, not {}",
                                        fmt::join(methods, " or "), args.method));
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

std::string blocks_text(const std::vector<int>& blocks) { return fmt::format("{}", fmt::join(blocks, ",")); }

int64_t weights_of(const Checkpoint& c) {
    int64_t total = 0;
    for (const auto& name : c.file.order) {
        if (name.rfind("optimizer.", 0) != 0) total += static_cast<int64_t>(c.file.tensors.at(name).data.size());
    }
    return total;
}

int run_surgery(const SurgeryArgs& args) {
    if (args.method != "upcycle" && args.method != "warmstart" && args.method != "scratch") {
        throw UserError("", "--method", "expected upcycle, warmstart or scratch, found '" + args.method + "'");
    }
    refuse_unused_options(args);
    if (!std::filesystem::exists(args.in)) throw UserError(args.in, "--in", "no such file");
    if (std::filesystem::exists(args.out) && std::filesystem::equivalent(args.in, args.out)) {
        throw UserError(args.out, "--out", "is the input checkpoint; write the result elsewhere");
    }
    const Checkpoint dense = read_checkpoint(args.in);
    auto backend = make_backend("cpu");
    Checkpoint result;
    std::string what;
    try {
        if (args.method == "upcycle") {
            result = upcycle_checkpoint(dense, args.upcycle);
        } else if (args.method == "warmstart") {
            result = warmstart_checkpoint(dense, args.depth_multiplier, args.tiling,
                                          args.upcycle.optimizer_state);
        } else {
            result = scratch_checkpoint(dense, args.upcycle.moe, args.upcycle.seed, *backend);
        }
    } catch (const UserError& e) {
        rethrow_as_option_error(e);
    }
    const ModelConfig& m = result.config.model;
    if (args.method == "warmstart") {
        what = fmt::format("{} → {} blocks ({}), optimizer {}", dense.config.model.layers, m.layers,
                           args.tiling, args.upcycle.optimizer_state);
    } else {
        what = fmt::format("E={} {} k={} on blocks {}", m.moe.experts, m.moe.router, m.moe.k,
                           blocks_text(moe_layer_indices(m)));
        if (args.method == "upcycle") {
            what += fmt::format(", experts {}, router {}, optimizer {}", args.upcycle.expert_init,
                                args.upcycle.router_init, args.upcycle.optimizer_state);
        } else {
            what += fmt::format(", random init seed {}", args.upcycle.seed);
        }
    }
    const std::filesystem::path out(args.out);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    write_checkpoint(out, result, *backend);
    fmt::print("surgery {}: {} → {} parameters | {} | step {} | {}\n", args.method,
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
    auto* sub = app.add_subcommand(
        "surgery", "Turn a dense checkpoint into an MoE (upcycle), a deeper dense model "
                   "(warmstart) or the same MoE from random init (scratch)");
    sub->add_option("--method", args->method, "upcycle | warmstart | scratch")->required();
    sub->add_option("--in", args->in, "dense checkpoint (.safetensors)")->required();
    sub->add_option("--out", args->out, "output checkpoint (.safetensors)")->required();
    auto& g = args->given;
    g["--experts"] = sub->add_option("--experts", moe.experts, "experts E")->capture_default_str();
    g["--layers"] = sub->add_option("--layers", moe.layers, "MoE blocks: every_other | all | i,j,…")
                        ->capture_default_str();
    g["--router"] = sub->add_option("--router", moe.router, "topk | expert_choice (refused in a GPT)")
                        ->capture_default_str();
    g["--k"] = sub->add_option("--k", moe.k, "experts per token (topk)")->capture_default_str();
    g["--capacity-factor"] = sub->add_option("--capacity-factor", moe.capacity_factor,
                                             "training capacity factor (≤ 0: no limit)")
                                 ->capture_default_str();
    g["--eval-capacity-factor"] = sub->add_option("--eval-capacity-factor", moe.eval_capacity_factor,
                                                  "evaluation capacity factor (≤ 0: no limit)")
                                      ->capture_default_str();
    g["--combine"] = sub->add_option("--combine", moe.combine, "softmax_topk | renormalized")
                         ->capture_default_str();
    g["--priority"] = sub->add_option("--priority", moe.priority, "token_order | probability")
                          ->capture_default_str();
    g["--aux-loss-coef"] = sub->add_option("--aux-loss-coef", moe.aux_loss_coef,
                                           "load-balancing loss coefficient")
                               ->capture_default_str();
    g["--z-loss-coef"] = sub->add_option("--z-loss-coef", moe.z_loss_coef, "router z-loss coefficient")
                             ->capture_default_str();
    g["--init"] = sub->add_option("--init", u.expert_init, "expert init: copy | noise | drop")
                      ->capture_default_str();
    g["--noise-std"] = sub->add_option("--noise-std", u.noise_std,
                                       "noise σ, relative to each tensor's std (--init noise)")
                           ->capture_default_str();
    g["--drop-ratio"] = sub->add_option("--drop-ratio", u.drop_ratio,
                                        "fraction of hidden neurons re-initialised (--init drop)")
                            ->capture_default_str();
    g["--router-init"] = sub->add_option("--router-init", u.router_init, "normal (std 0.02) | zeros")
                             ->capture_default_str();
    g["--optimizer-state"] = sub->add_option("--optimizer-state", u.optimizer_state,
                                             "reset | copy (upcycle, warmstart)")
                                 ->capture_default_str();
    g["--depth-multiplier"] = sub->add_option("--depth-multiplier", args->depth_multiplier,
                                              "warmstart: blocks × M")
                                  ->capture_default_str();
    g["--tiling"] = sub->add_option("--tiling", args->tiling, "warmstart: stack | interleave")
                        ->capture_default_str();
    g["--seed"] = sub->add_option("--seed", u.seed, "router / noise / drop / scratch init seed")
                      ->capture_default_str();
    return [args] { return run_surgery(*args); };
}

}  // namespace upcycle::cli
