// upcycle eval --ckpt FILE [--text FILE | --tokens FILE] [--json] [--max-windows N]
//              [--max-images N] [--batch B] [--device cpu]
// A GPT is evaluated on its held-out text or validation token files (or on --text, or on a
// --tokens file: an llm.c shard or a nanoGPT .bin); a ViT on its validation split, and on the
// test split (accuracy and the few-shot probe, as at the end of a run).
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/data/kjv.h"
#include "core/data/text_batches.h"
#include "core/data/token_shards.h"
#include "core/errors.h"
#include "core/eval.h"
#include "core/model/gpt.h"
#include "core/task/task.h"
#include "core/window_eval.h"
#include "kernels/backend_factory.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct EvalArgs {
    std::string checkpoint;
    std::string text;
    std::string tokens;
    bool json = false;
    int64_t max_windows = 0;
    int64_t max_images = 0;
    int batch = 16;
    std::string device = "cpu";
    std::string precision;  // "": the precision the checkpoint was trained in
};

// --text: the GPT on any text file.
EvalResult evaluate_text_file(const Checkpoint& ckpt, Backend& backend, const EvalArgs& args) {
    if (ckpt.config.model.arch != Arch::Gpt) {
        throw UserError(args.checkpoint, "--text", "only a GPT checkpoint evaluates on text");
    }
    Gpt model(backend, ckpt.config.model, args.batch);
    load_into(ckpt, model, nullptr);
    const std::string text = read_text_file(args.text);
    if (count_eval_windows(text.size(), ckpt.config.model.context) == 0) {
        throw UserError(args.text, "",
                        "shorter than one window of " +
                            std::to_string(ckpt.config.model.context + 1) + " bytes");
    }
    return evaluate_text(model, text, args.max_windows);
}

// --tokens: the GPT on one file of token ids.
EvalResult evaluate_token_file(const Checkpoint& ckpt, Backend& backend, const EvalArgs& args) {
    if (ckpt.config.model.arch != Arch::Gpt) {
        throw UserError(args.checkpoint, "--tokens", "only a GPT checkpoint evaluates on tokens");
    }
    const TokenShards shards({std::filesystem::path(args.tokens)});
    shards.check_vocabulary(ckpt.config.model.vocab_size);
    if (shards.count_eval_windows(ckpt.config.model.context) == 0) {
        throw UserError(args.tokens, "",
                        "shorter than one window of " +
                            std::to_string(ckpt.config.model.context + 1) + " tokens");
    }
    Gpt model(backend, ckpt.config.model, args.batch);
    load_into(ckpt, model, nullptr);
    return evaluate_tokens(model, shards, args.max_windows);
}

int run_eval(const EvalArgs& args) {
    const Checkpoint ckpt = read_checkpoint(args.checkpoint);
    auto backend = make_backend(args.device);
    backend->set_precision(args.precision.empty()
                               ? ckpt.config.train.precision
                               : parse_choice<Precision>(args.precision, "", "--precision"));
    EvalResult r;
    std::string source;
    std::string unit = "bytes";
    if (!args.text.empty() && !args.tokens.empty()) {
        throw UserError("", "--tokens", "give --text or --tokens, not both");
    }
    if (!args.text.empty()) {
        r = evaluate_text_file(ckpt, *backend, args);
        source = args.text;
    } else if (!args.tokens.empty()) {
        r = evaluate_token_file(ckpt, *backend, args);
        source = args.tokens;
        unit = "tokens";
    } else {
        RunConfig config = ckpt.config;
        config.train.batch_size = args.batch;
        config.train.micro_batch = 0;  // evaluation has no gradients to accumulate
        config.eval.max_windows = args.max_windows;
        config.eval.max_images = args.max_images;
        const auto task = make_training_task(*backend, config, args.checkpoint);
        load_into(ckpt, task->model(), nullptr);
        r = task->evaluate(EvalScope::Full);
        source = to_string(ckpt.config.data.source) + " validation split";
        unit = task->prediction_unit();
    }
    if (args.json) {
        nlohmann::json out{{"checkpoint", args.checkpoint},
                           {"data", source},
                           {"step", ckpt.state.step},
                           {"val_loss", r.loss},
                           {"val_accuracy", r.accuracy}};
        if (unit == "bytes" || unit == "tokens") {
            out["tokens"] = r.tokens;
            out["windows"] = r.windows;
        } else {
            out[unit] = r.tokens;
        }
        for (const auto& [key, value] : r.extra) out[key] = value;
        fmt::print("{}\n", out.dump(2));
    } else {
        fmt::print("{} (step {}) on {}: loss {:.4f} | accuracy {:.4f} | {} {}{}\n", args.checkpoint,
                   ckpt.state.step, source, r.loss, r.accuracy, r.tokens, unit,
                   format_extra_metrics(r));
    }
    return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
    auto args = std::make_shared<EvalArgs>();
    auto* sub = app.add_subcommand(
        "eval", "Validation loss and accuracy of a checkpoint (a ViT's also on the test split)");
    sub->add_option("--ckpt", args->checkpoint, "checkpoint (.safetensors)")->required();
    sub->add_option("--text", args->text,
                    "evaluate on this text file instead of the held-out split");
    sub->add_option("--tokens", args->tokens,
                    "evaluate on this file of token ids (an llm.c shard or a raw uint16 .bin)");
    sub->add_flag("--json", args->json, "print JSON");
    sub->add_option("--max-windows", args->max_windows,
                    "text: evaluate N evenly spaced windows (0: all)");
    sub->add_option("--max-images", args->max_images,
                    "images: evaluate N evenly spaced validation images (0: all)");
    sub->add_option("--batch", args->batch, "windows or images per forward pass")
        ->check(CLI::PositiveNumber);
    sub->add_option("--device", args->device, "cpu | cuda[:N]");
    sub->add_option("--precision", args->precision,
                    "GEMM precision: fp32 | bf16 (default: the checkpoint's train.precision)");
    return [args] { return run_eval(*args); };
}

}  // namespace upcycle::cli
