// upcycle import --format hf|llmc --in PATH --out CKPT (--sunk-tokens N | --sunk-flops F)
//                [--set key.path=value ...]
// A dense GPT-2 from the ecosystem (a Hugging Face GPT2LMHeadModel folder, or llm.c's
// gpt2_*.bin) becomes a native checkpoint with a declared sunk cost (core/import/).
#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/flops.h"
#include "core/import/hf_gpt2.h"
#include "core/import/imported_gpt.h"
#include "core/import/llmc_gpt2.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct ImportArgs {
    std::string format;
    std::string in;
    std::string out;
    std::optional<double> sunk_tokens;
    std::optional<double> sunk_flops;
    std::vector<std::string> overrides;
};

int run_import(const ImportArgs& args) {
    if (!std::filesystem::exists(args.in))
        throw UserError(args.in, "--in", "no such file or folder");
    ImportedGpt source;
    if (args.format == "hf") {
        source = read_hf_gpt2(args.in);
    } else if (args.format == "llmc") {
        source = read_llmc_gpt2(args.in);
    } else {
        throw_bad_choice("", "--format", {"hf", "llmc"}, args.format);
    }
    const Checkpoint ckpt =
        imported_checkpoint(source, {args.sunk_tokens, args.sunk_flops}, args.in, args.overrides);
    const std::filesystem::path out(args.out);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    auto backend = make_backend("cpu");
    write_checkpoint(out, ckpt, *backend);
    fmt::print("import {}: {} | {} parameters | sunk cost {}{} | {}\n", source.format,
               describe_model(ckpt.config.model),
               format_count(static_cast<double>(parameter_count(ckpt.config.model))),
               format_flops(ckpt.state.flops),
               args.sunk_tokens ? fmt::format(" ({} tokens)", format_count(*args.sunk_tokens)) : "",
               args.out);
    return 0;
}

}  // namespace

Command add_import_command(CLI::App& app) {
    auto args = std::make_shared<ImportArgs>();
    auto* sub = app.add_subcommand(
        "import", "Make a native checkpoint of a dense GPT-2 from Hugging Face or llm.c files");
    sub->add_option("--format", args->format,
                    "hf (a GPT2LMHeadModel folder: config.json + model.safetensors) | llmc "
                    "(llm.c's gpt2_*.bin)")
        ->required();
    sub->add_option("--in", args->in, "the model folder (hf) or file (llmc)")->required();
    sub->add_option("--out", args->out, "output checkpoint (.safetensors)")->required();
    sub->add_option("--sunk-tokens", args->sunk_tokens,
                    "the source's training tokens: its sunk cost, in FLOPs by core/flops.h");
    sub->add_option("--sunk-flops", args->sunk_flops, "the source's training FLOPs");
    sub->add_option("--set", args->overrides,
                    "override a run-config key: key.path=value (repeatable; model.context may "
                    "be lowered, keeping the first positions)");
    return [args] { return run_import(*args); };
}

}  // namespace upcycle::cli
