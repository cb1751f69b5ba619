// upcycle eval --ckpt FILE [--text FILE] [--json] [--max-windows N] [--batch B] [--device cpu]
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/data/kjv.h"
#include "core/data/text_batches.h"
#include "core/errors.h"
#include "core/eval.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"

namespace upcycle::cli {

namespace {

struct EvalArgs {
    std::string checkpoint;
    std::string text;
    bool json = false;
    int64_t max_windows = 0;
    int batch = 16;
    std::string device = "cpu";
};

int run_eval(const EvalArgs& args) {
    const Checkpoint ckpt = read_checkpoint(args.checkpoint);
    auto backend = make_backend(args.device);
    Gpt model(*backend, ckpt.config.model, args.batch);
    load_into(ckpt, model, nullptr);
    std::string source;
    std::string text;
    if (!args.text.empty()) {
        text = read_text_file(args.text);
        source = args.text;
    } else {
        text = load_text_corpus(ckpt.config.data, args.checkpoint).validation;
        source = ckpt.config.data.source + " validation split";
    }
    if (count_eval_windows(text.size(), ckpt.config.model.context) == 0) {
        throw UserError(source, "", "shorter than one window of " +
                                        std::to_string(ckpt.config.model.context + 1) + " bytes");
    }
    const EvalResult r = evaluate_text(model, text, args.max_windows);
    if (args.json) {
        fmt::print("{}\n", nlohmann::json{{"checkpoint", args.checkpoint},
                                          {"text", source},
                                          {"step", ckpt.state.step},
                                          {"val_loss", r.loss},
                                          {"val_accuracy", r.accuracy},
                                          {"tokens", r.tokens},
                                          {"windows", r.windows}}
                               .dump(2));
    } else {
        fmt::print("{} (step {}) on {}: loss {:.4f} | accuracy {:.4f} | {} bytes in {} windows\n",
                   args.checkpoint, ckpt.state.step, source, r.loss, r.accuracy, r.tokens,
                   r.windows);
    }
    return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
    auto args = std::make_shared<EvalArgs>();
    auto* sub = app.add_subcommand("eval", "Validation loss and next-token accuracy of a checkpoint");
    sub->add_option("--ckpt", args->checkpoint, "checkpoint (.safetensors)")->required();
    sub->add_option("--text", args->text, "evaluate on this text file instead of the held-out split");
    sub->add_flag("--json", args->json, "print JSON");
    sub->add_option("--max-windows", args->max_windows, "evaluate N evenly spaced windows (0: all)");
    sub->add_option("--batch", args->batch, "windows per forward pass")->check(CLI::PositiveNumber);
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    return [args] { return run_eval(*args); };
}

}  // namespace upcycle::cli
