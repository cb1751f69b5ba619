// Config choices as enums: every name round-trips through its table and through JSON, and a
// wrong word — in YAML, in a checkpoint's JSON, or given directly — is an error that names the
// file, the key, the choices and the closest one.
#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "core/choice.h"
#include "core/config.h"
#include "core/errors.h"

namespace upcycle {
namespace {

template <class E>
void expect_names_round_trip() {
    std::set<std::string> seen;
    for (const auto& [value, name] : ChoiceNames<E>::table) {
        EXPECT_TRUE(seen.insert(std::string(name)).second) << "duplicate name " << name;
        EXPECT_EQ(name_of(value), name);
        EXPECT_EQ(find_choice<E>(name), value);
        const nlohmann::json json = value;
        EXPECT_EQ(json, std::string(name));
        EXPECT_EQ(json.get<E>(), value);
    }
    EXPECT_EQ(choice_names<E>().size(), ChoiceNames<E>::table.size());
    EXPECT_FALSE(find_choice<E>("no such choice").has_value());
}

TEST(Choice, EveryNameRoundTrips) {
    expect_names_round_trip<Arch>();
    expect_names_round_trip<RouterKind>();
    expect_names_round_trip<Combine>();
    expect_names_round_trip<Priority>();
    expect_names_round_trip<Schedule>();
    expect_names_round_trip<DataSource>();
    expect_names_round_trip<Augmentation>();
    expect_names_round_trip<Precision>();
    expect_names_round_trip<Method>();
    expect_names_round_trip<BudgetUnit>();
    expect_names_round_trip<TrialStatus>();
}

// The words are what JSON, checkpoints and trial hashes hold: they must never change.
TEST(Choice, NamesAreTheStoredWords) {
    EXPECT_EQ(choice_names<Method>(),
              (std::vector<std::string>{"pretrain", "dense", "upcycle", "scratch", "warmstart"}));
    EXPECT_EQ(choice_names<TrialStatus>(),
              (std::vector<std::string>{"pending", "running", "done", "failed"}));
    EXPECT_EQ(to_string(RouterKind::ExpertChoice), "expert_choice");
    EXPECT_EQ(to_string(Combine::SoftmaxTopK), "softmax_topk");
    EXPECT_EQ(to_string(DataSource::FashionMnist), "fashion_mnist");
    EXPECT_EQ(to_string(Precision::BF16), precision_name(Precision::BF16));
}

TEST(Choice, ABadWordNamesFileKeyChoicesAndTheClosest) {
    try {
        parse_choice<RouterKind>("expert_choise", "run.yaml", "model.moe.router");
        ADD_FAILURE() << "accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.file(), "run.yaml");
        EXPECT_EQ(e.key(), "model.moe.router");
        EXPECT_NE(
            std::string(e.what()).find("expected topk or expert_choice, found 'expert_choise'"),
            std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("did you mean 'expert_choice'?"), std::string::npos)
            << e.what();
    }
    // nothing close: the choices, no guess
    const std::string far = choice_error(choice_names<Schedule>(), "linear");
    EXPECT_EQ(far, "expected constant, rsqrt or cosine, found 'linear'");
    // JSON with a wrong word is a JSON type error (readers that know the key say which)
    EXPECT_THROW(nlohmann::json("topK").get<RouterKind>(), nlohmann::json::type_error);
}

TEST(Choice, ConfigsParseChoicesOnceWithLinesAndSuggestions) {
    const RunConfig c = parse_run_config(
        "model:\n  arch: gpt\n  moe:\n    experts: 4\n    router: topk\n    combine: renormalized\n"
        "train:\n  schedule: cosine\n  precision: bf16\n",
        "run.yaml");
    EXPECT_EQ(c.model.moe.router, RouterKind::TopK);
    EXPECT_EQ(c.model.moe.combine, Combine::Renormalized);
    EXPECT_EQ(c.train.schedule, Schedule::Cosine);
    EXPECT_EQ(c.train.precision, Precision::BF16);
    // the config's JSON (checkpoints, trial identities) holds the words
    const nlohmann::json json = to_json(c);
    EXPECT_EQ(json["model"]["moe"]["combine"], "renormalized");
    EXPECT_EQ(json["train"]["schedule"], "cosine");
    EXPECT_EQ(run_config_from_json(json, "ckpt").train.precision, Precision::BF16);

    try {
        parse_run_config("train:\n  lr: 0.1\n  schedule: rsqr\n", "run.yaml");
        ADD_FAILURE() << "accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.key(), "train.schedule");
        const std::string what = e.what();
        EXPECT_NE(what.find("line 3"), std::string::npos) << what;
        EXPECT_NE(what.find("did you mean 'rsqrt'"), std::string::npos) << what;
    }
    nlohmann::json bad = json;
    bad["model"]["arch"] = "vti";
    try {
        run_config_from_json(bad, "ckpt.safetensors");
        ADD_FAILURE() << "accepted";
    } catch (const UserError& e) {
        EXPECT_EQ(e.file(), "ckpt.safetensors");
        EXPECT_EQ(e.key(), "model.arch");
        EXPECT_NE(std::string(e.what()).find("did you mean 'vit'"), std::string::npos) << e.what();
    }
    bad["model"]["arch"] = 3;
    EXPECT_THROW(run_config_from_json(bad, "ckpt.safetensors"), UserError);
}

}  // namespace
}  // namespace upcycle
