// Run configs: YAML reading, overrides, presets, and the errors a person sees.
#include <gtest/gtest.h>

#include <limits>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/errors.h"

namespace upcycle {
namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    try {
        parse_run_config(yaml, "sweep.yaml", overrides);
    } catch (const UserError& e) {
        return e.what();
    }
    return "";
}

TEST(Config, ReadsKeysFillsDefaultsAndAppliesOverrides) {
    const auto c = parse_run_config(
        "name: demo\nmodel:\n  preset: gpt-small\n  layers: 2\ntrain:\n  lr: 3e-4\n  steps: 1e3\n",
        "demo.yaml", {"train.batch_size=4", "eval.every=7"});
    EXPECT_EQ(c.name, "demo");
    EXPECT_EQ(c.model.channels, 512);  // from the preset
    EXPECT_EQ(c.model.layers, 2);      // explicit key beats the preset
    EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
    EXPECT_EQ(c.train.steps, 1000);
    EXPECT_EQ(c.train.batch_size, 4);
    EXPECT_EQ(c.eval.every, 7);
    EXPECT_EQ(to_string(c.train.schedule), "rsqrt");  // default
}

TEST(Config, UnknownKeyNamesFileKeyLineAndSuggestion) {
    const auto e = error_of("train:\n  lr: 0.1\n  warmup_step: 10\n");
    EXPECT_NE(e.find("sweep.yaml"), std::string::npos) << e;
    EXPECT_NE(e.find("train.warmup_step"), std::string::npos) << e;
    EXPECT_NE(e.find("line 3"), std::string::npos) << e;
    EXPECT_NE(e.find("did you mean 'warmup_steps'"), std::string::npos) << e;
    const auto top = error_of("modle:\n  layers: 2\n");
    EXPECT_NE(top.find("did you mean 'model'"), std::string::npos) << top;
}

// Found by fuzz/fuzz_run_config.cpp: a mapping key that is a list or a mapping (valid YAML,
// e.g. `{[1, 5]: 2}`) escaped as a yaml-cpp conversion exception, not a UserError.
TEST(Config, NonScalarKeyIsRejectedNamingItsSectionAndLine) {
    const auto top = error_of("name: x\n[1, 5]: 2\n");
    EXPECT_NE(top.find("sweep.yaml: expected a key name, found a list (line 2)"), std::string::npos)
        << top;
    const auto section = error_of("model:\n  channels: 8\n  {a: 1}: 2\n");
    EXPECT_NE(section.find("'model': expected a key name, found a mapping (line 3)"),
              std::string::npos)
        << section;
    const auto nested = error_of("model:\n  moe: {[1]: 2}\n");
    EXPECT_NE(nested.find("'model.moe': expected a key name"), std::string::npos) << nested;
    const auto preset = error_of("model: {preset: gpt-tiny, [1, 5]}\n");
    EXPECT_NE(preset.find("'model': expected a key name, found a list"), std::string::npos)
        << preset;
}

TEST(Config, WrongTypeSaysWhatWasExpected) {
    const auto e = error_of("train:\n  steps: lots\n");
    EXPECT_NE(e.find("train.steps"), std::string::npos) << e;
    EXPECT_NE(e.find("expected an integer"), std::string::npos) << e;
    EXPECT_NE(e.find("'lots'"), std::string::npos) << e;
    EXPECT_NE(error_of("train:\n  steps: 2.5\n").find("expected an integer"), std::string::npos);
    EXPECT_NE(error_of("train: 3\n").find("expected a mapping"), std::string::npos);
}

TEST(Config, ImpossibleValuesAreRejected) {
    EXPECT_NE(error_of("model:\n  channels: 100\n  heads: 3\n").find("divisible"),
              std::string::npos);
    EXPECT_NE(error_of("train:\n  schedule: linear\n").find("constant, rsqrt or cosine"),
              std::string::npos);
    EXPECT_NE(error_of("data:\n  source: text\n").find("data.path"), std::string::npos);
    EXPECT_NE(error_of("model:\n  preset: gpt-tiyn\n").find("did you mean 'gpt-tiny'"),
              std::string::npos);
    EXPECT_NE(error_of("", {"train.lr"}).find("key.path=value"), std::string::npos);
    EXPECT_NE(error_of("", {"train.lr=-1"}).find("positive"), std::string::npos);
    EXPECT_NE(error_of("", {"train.nonsense=1"}).find("unknown key"), std::string::npos);
    EXPECT_NE(error_of("model: [1, 2\n").find("not valid YAML"), std::string::npos);
    const std::string micro = error_of("train:\n  batch_size: 8\n  micro_batch: 3\n");
    EXPECT_NE(micro.find("train.micro_batch"), std::string::npos) << micro;
    EXPECT_NE(micro.find("divisor of train.batch_size (8)"), std::string::npos) << micro;
    const std::string precision = error_of("", {"train.precision=fp16"});
    EXPECT_NE(precision.find("train.precision"), std::string::npos) << precision;
    EXPECT_NE(precision.find("expected fp32 or bf16"), std::string::npos) << precision;
}

// NaN passes every range check written as a comparison that fails, and .inf is no setting:
// every number of a config is finite, however it was given.
TEST(Config, NonFiniteNumbersAreRefusedWhereverTheyComeFrom) {
    for (const char* value : {".nan", ".inf", "-.inf", ".NaN"}) {
        const auto e = error_of(std::string("train:\n  lr: ") + value + "\n");
        EXPECT_NE(e.find("'train.lr': expected a finite number, found '" + std::string(value) +
                         "' (line 2)"),
                  std::string::npos)
            << e;
    }
    const auto from_set =
        error_of("model:\n  moe: {experts: 4}\n", {"model.moe.capacity_factor=.inf"});
    EXPECT_NE(from_set.find("'model.moe.capacity_factor': expected a finite number"),
              std::string::npos)
        << from_set;
    // made in code (a flag, a checkpoint's JSON): validate() refuses it too
    RunConfig c;
    c.model.moe.experts = 4;
    c.model.moe.eval_capacity_factor = std::numeric_limits<double>::quiet_NaN();
    try {
        validate(c, "made.yaml");
        FAIL() << "a NaN eval_capacity_factor passed validation";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "model.moe.eval_capacity_factor");
        EXPECT_NE(std::string(e.what()).find("expected a finite number"), std::string::npos);
    }
    nlohmann::json json = to_json(RunConfig{});
    json["train"]["grad_clip"] = std::numeric_limits<double>::infinity();
    EXPECT_THROW(validate(run_config_from_json(json, "ckpt"), "ckpt"), UserError);
}

// YAML forbids a key twice in a mapping; yaml-cpp would quietly take the first.
TEST(Config, ADuplicateKeyIsRefusedWithBothLines) {
    const auto e = error_of("model:\n  preset: gpt-tiny\n  channels: 64\n  channels: 128\n");
    EXPECT_NE(e.find("'model.channels': appears twice in one mapping (line 3) and again (line 4)"),
              std::string::npos)
        << e;
    const auto top = error_of("# a comment\ntrain: {lr: 0.1}\ntrain: {lr: 0.2}\n");
    EXPECT_NE(top.find("'train': appears twice"), std::string::npos) << top;
}

// An override's error names the override, not a line of the file it is not in; an error
// elsewhere after overrides still names its line in the file.
TEST(Config, OverrideErrorsNameTheOverride) {
    const std::string yaml = "# demo\ntrain:\n  lr: 0.1\n  warmup_steps: -4\n";
    const auto bad_value = error_of("train:\n  lr: 0.1\n", {"train.lr=abc"});
    EXPECT_NE(bad_value.find("expected a number, found 'abc' (from --set train.lr=abc)"),
              std::string::npos)
        << bad_value;
    EXPECT_EQ(bad_value.find("line"), std::string::npos) << bad_value;
    const auto elsewhere = error_of(yaml, {"train.lr=0.2"});
    EXPECT_NE(elsewhere.find("'train.warmup_steps': expected a non-negative integer (line 4)"),
              std::string::npos)
        << elsewhere;
    const auto unknown = error_of(yaml, {"train.lr_rate=3"});
    EXPECT_NE(unknown.find("did you mean 'lr'?"), std::string::npos) << unknown;
    EXPECT_NE(unknown.find("(from --set train.lr_rate=3)"), std::string::npos) << unknown;
    // an empty value would quietly keep the default
    const auto empty = error_of(yaml, {"train.lr="});
    EXPECT_NE(empty.find("--set: 'train.lr': has no value"), std::string::npos) << empty;
    EXPECT_DOUBLE_EQ(parse_run_config("", "x", {"data.path=''"}).data.path.size(), 0);
}

TEST(Config, VitKeysAreValidatedWithTheKeyNamed) {
    const std::string vit = "model:\n  arch: vit\ndata:\n  source: fashion_mnist\n";
    EXPECT_EQ(error_of(vit), "");
    EXPECT_NE(error_of("model:\n  arch: vit\n").find("data.source"), std::string::npos);
    EXPECT_NE(error_of("model:\n  arch: vti\n").find("expected gpt or vit"), std::string::npos);
    EXPECT_NE(error_of("data:\n  source: fashion_mnist\n").find("a gpt trains on text"),
              std::string::npos);
    const auto patch = error_of(vit, {"model.patch=5"});
    EXPECT_NE(patch.find("model.patch"), std::string::npos);
    EXPECT_NE(patch.find("must divide"), std::string::npos);
    EXPECT_NE(error_of(vit, {"data.augment=flip"}).find("none or crop_flip"), std::string::npos);
    EXPECT_NE(error_of(vit, {"eval.probe_shots=[1, x]"}).find("eval.probe_shots"),
              std::string::npos);
    EXPECT_NE(error_of(vit, {"data.validation_images=3"}).find("data.validation_images"),
              std::string::npos);
    // expert choice is fine in an encoder, refused in a causal decoder
    const std::vector<std::string> ec{"model.moe.experts=4", "model.moe.router=expert_choice"};
    EXPECT_EQ(error_of(vit, ec), "");
    EXPECT_NE(error_of("", ec).find("leaks the future"), std::string::npos);
    const RunConfig c = parse_run_config(vit, "v.yaml", {"eval.probe_shots=[1, 5, 10]"});
    EXPECT_EQ(probe_shot_counts(c.eval), (std::vector<int>{1, 5, 10}));
    EXPECT_EQ(tokens_per_example(c.model), 1 + 7 * 7);
    EXPECT_EQ(describe_model(c.model), "ViT L=4 C=128 H=4 patch=4 T=50");
}

TEST(Config, JsonRoundTripIsExact) {
    const auto c = parse_run_config("model:\n  preset: gpt-124m\ntrain:\n  lr: 0.000123\n", "x");
    const auto json = to_json(c);
    const auto back = run_config_from_json(json, "checkpoint");
    EXPECT_EQ(to_json(back), json);
    EXPECT_EQ(back.model.vocab_size, 50304);
    EXPECT_DOUBLE_EQ(back.train.lr, 0.000123);
}

// Found by fuzz/fuzz_safetensors.cpp (the config a checkpoint stores): a "name" that is not a
// string escaped as a nlohmann::json type_error instead of a UserError.
TEST(Config, JsonNameThatIsNotAStringIsRejected) {
    try {
        run_config_from_json({{"name", 5}}, "ckpt (upcycle.config)");
        FAIL() << "accepted";
    } catch (const UserError& e) {
        EXPECT_NE(std::string(e.what()).find("ckpt (upcycle.config): 'name': expected a string"),
                  std::string::npos)
            << e.what();
    }
}

// Found by fuzz/fuzz_run_config.cpp: model.layers: 2000000000 with experts made validate()
// build a list of a billion MoE block indices (out of memory); the depth is bounded.
TEST(Config, AbsurdDepthIsRejectedBeforeAnythingIsBuilt) {
    const auto e = error_of("model:\n  layers: 2000000000\n");
    EXPECT_NE(e.find("'model.layers': expected at most 65536 blocks, found 2000000000"),
              std::string::npos)
        << e;
    EXPECT_EQ(error_of("model:\n  layers: 65536\n  channels: 4\n  heads: 1\n"), "");
}

TEST(Config, ClosestMatch) {
    EXPECT_EQ(closest_match("chanels", {"channels", "layers"}), "channels");
    EXPECT_EQ(closest_match("zzzzzz", {"channels", "layers"}), "");
    // a known key as a whole part of the word
    EXPECT_EQ(closest_match("lr_rate", {"batch_size", "lr", "warmup_steps"}), "lr");
    EXPECT_EQ(closest_match("max_lr", {"lr", "min_lr_ratio"}), "lr");
    EXPECT_EQ(closest_match("lr_warmup_steps", {"lr", "warmup_steps"}), "warmup_steps");
    EXPECT_EQ(closest_match("learning_rate", {"lr", "steps"}), "");
}

}  // namespace
}  // namespace upcycle
