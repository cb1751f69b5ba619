// upcycle export --ckpt CKPT --format hf --out DIR
// A dense GPT checkpoint as a Hugging Face GPT2LMHeadModel folder (config.json +
// model.safetensors), for transformers and evaluation harnesses (core/import/hf_gpt2.h).
#include <fmt/format.h>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/import/hf_gpt2.h"
#include "runner/commands.h"

namespace upcycle::cli {

namespace {

struct ExportArgs {
    std::string checkpoint;
    std::string format = "hf";
    std::string out;
};

int run_export(const ExportArgs& args) {
    if (args.format != "hf") throw_bad_choice("", "--format", {"hf"}, args.format);
    const Checkpoint ckpt = read_checkpoint(args.checkpoint);
    write_hf_gpt2(args.out, ckpt);
    fmt::print("export hf: {} (step {}) → {}/config.json, {}/model.safetensors\n",
               describe_model(ckpt.config.model), ckpt.state.step, args.out, args.out);
    return 0;
}

}  // namespace

Command add_export_command(CLI::App& app) {
    auto args = std::make_shared<ExportArgs>();
    auto* sub = app.add_subcommand(
        "export", "Write a dense GPT checkpoint as a Hugging Face GPT2LMHeadModel folder");
    sub->add_option("--ckpt", args->checkpoint, "checkpoint (.safetensors)")->required();
    sub->add_option("--format", args->format, "hf")->capture_default_str();
    sub->add_option("--out", args->out, "output folder")->required();
    return [args] { return run_export(*args); };
}

}  // namespace upcycle::cli
