#pragma once
// The closed sets of words a config, a sweep, the command line or the store may hold (an
// architecture, a router, a schedule, a continuation method, …) as enum classes, each with
// one table of its names. A word is parsed once, where it enters (YAML, JSON, a flag, a
// database row), with an error that names the file, the key, the choices and a "did you mean";
// everywhere else code compares enums. The names are what JSON, checkpoints and trial hashes
// hold, so they never change.
#include <array>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/precision.h"  // Precision: train.precision

namespace upcycle {

enum class Arch { Gpt, Vit };                                          // model.arch
enum class RouterKind { TopK, ExpertChoice };                          // model.moe.router
enum class Combine { SoftmaxTopK, Renormalized };                      // model.moe.combine
enum class Priority { TokenOrder, Probability };                       // model.moe.priority
enum class Schedule { Constant, Rsqrt, Cosine };                       // train.schedule
enum class DataSource { Kjv, Synthetic, Text, FashionMnist, Tokens };  // data.source
// data.augment. CropFlip: pad by data.crop_padding pixels with the normalised value of a black
// pixel, take a rows × cols window at a random offset, then mirror horizontally with p = 1/2.
enum class Augmentation { None, CropFlip };
enum class Method { Pretrain, Dense, Upcycle, Scratch, Warmstart };  // a trial's method
enum class BudgetUnit { Flops, Seconds, Steps };                     // continue.budget_unit
enum class TrialStatus { Pending, Running, Done, Failed };           // trials.status in the store

// The name table of each choice, in the order errors list them.
template <class E>
struct ChoiceNames;

template <class E, std::size_t N>
using NameTable = std::array<std::pair<E, std::string_view>, N>;

template <>
struct ChoiceNames<Arch> {
    static constexpr NameTable<Arch, 2> table{{{Arch::Gpt, "gpt"}, {Arch::Vit, "vit"}}};
};
template <>
struct ChoiceNames<RouterKind> {
    static constexpr NameTable<RouterKind, 2> table{
        {{RouterKind::TopK, "topk"}, {RouterKind::ExpertChoice, "expert_choice"}}};
};
template <>
struct ChoiceNames<Combine> {
    static constexpr NameTable<Combine, 2> table{
        {{Combine::SoftmaxTopK, "softmax_topk"}, {Combine::Renormalized, "renormalized"}}};
};
template <>
struct ChoiceNames<Priority> {
    static constexpr NameTable<Priority, 2> table{
        {{Priority::TokenOrder, "token_order"}, {Priority::Probability, "probability"}}};
};
template <>
struct ChoiceNames<Schedule> {
    static constexpr NameTable<Schedule, 3> table{{{Schedule::Constant, "constant"},
                                                   {Schedule::Rsqrt, "rsqrt"},
                                                   {Schedule::Cosine, "cosine"}}};
};
template <>
struct ChoiceNames<DataSource> {
    static constexpr NameTable<DataSource, 5> table{{{DataSource::Kjv, "kjv"},
                                                     {DataSource::Synthetic, "synthetic"},
                                                     {DataSource::Text, "text"},
                                                     {DataSource::FashionMnist, "fashion_mnist"},
                                                     {DataSource::Tokens, "tokens"}}};
};
template <>
struct ChoiceNames<Augmentation> {
    static constexpr NameTable<Augmentation, 2> table{
        {{Augmentation::None, "none"}, {Augmentation::CropFlip, "crop_flip"}}};
};
template <>
struct ChoiceNames<Precision> {
    static constexpr NameTable<Precision, 2> table{
        {{Precision::FP32, "fp32"}, {Precision::BF16, "bf16"}}};
};
template <>
struct ChoiceNames<Method> {
    static constexpr NameTable<Method, 5> table{{{Method::Pretrain, "pretrain"},
                                                 {Method::Dense, "dense"},
                                                 {Method::Upcycle, "upcycle"},
                                                 {Method::Scratch, "scratch"},
                                                 {Method::Warmstart, "warmstart"}}};
};
template <>
struct ChoiceNames<BudgetUnit> {
    static constexpr NameTable<BudgetUnit, 3> table{{{BudgetUnit::Flops, "flops"},
                                                     {BudgetUnit::Seconds, "seconds"},
                                                     {BudgetUnit::Steps, "steps"}}};
};
template <>
struct ChoiceNames<TrialStatus> {
    static constexpr NameTable<TrialStatus, 4> table{{{TrialStatus::Pending, "pending"},
                                                      {TrialStatus::Running, "running"},
                                                      {TrialStatus::Done, "done"},
                                                      {TrialStatus::Failed, "failed"}}};
};

// An enum with a name table.
template <class E>
concept Choice = std::is_enum_v<E> && requires {
    ChoiceNames<E>::table;
};

// The value's name, as JSON and the store hold it.
template <Choice E>
constexpr std::string_view name_of(E value) {
    for (const auto& [v, name] : ChoiceNames<E>::table) {
        if (v == value) return name;
    }
    return "?";  // unreachable for a valid enumerator
}
template <Choice E>
std::string to_string(E value) {
    return std::string(name_of(value));
}

// Every name, in table order.
template <Choice E>
std::vector<std::string> choice_names() {
    std::vector<std::string> names;
    for (const auto& entry : ChoiceNames<E>::table) names.emplace_back(entry.second);
    return names;
}

// The value named `text`, or nullopt.
template <Choice E>
constexpr std::optional<E> find_choice(std::string_view text) {
    for (const auto& [v, name] : ChoiceNames<E>::table) {
        if (name == text) return v;
    }
    return std::nullopt;
}

// "gpt or vit", "constant, rsqrt or cosine".
std::string choice_list(const std::vector<std::string>& names);
// "expected gpt or vit, found 'vti'; did you mean 'vit'?" (the closest name, when one is close).
std::string choice_error(const std::vector<std::string>& names, std::string_view found);

// The value named `text`; else throws UserError(file, key, choice_error(…)).
[[noreturn]] void throw_bad_choice(const std::string& file, const std::string& key,
                                   const std::vector<std::string>& names, std::string_view found);
template <Choice E>
E parse_choice(std::string_view text, const std::string& file, const std::string& key) {
    if (const auto value = find_choice<E>(text)) return *value;
    throw_bad_choice(file, key, choice_names<E>(), text);
}

// The closest candidate by edit distance, else one that is an underscore-separated part of
// the word ("lr_rate": "lr"), or "" if none is close ("did you mean").
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// Streams print a choice by its name (test failures, logs).
template <Choice E>
std::ostream& operator<<(std::ostream& out, E value) {
    return out << name_of(value);
}

// JSON holds a choice by its name (nlohmann finds these by argument-dependent lookup).
template <Choice E>
void to_json(nlohmann::json& json, E value) {
    json = std::string(name_of(value));
}
// A name that is not in the table throws nlohmann's type_error, as any other wrong JSON value
// does; readers that know the file and key catch it and say which.
template <Choice E>
void from_json(const nlohmann::json& json, E& value) {
    const auto& text = json.get_ref<const std::string&>();
    const auto found = find_choice<E>(text);
    if (!found) {
        throw nlohmann::json::type_error::create(302, choice_error(choice_names<E>(), text), &json);
    }
    value = *found;
}

}  // namespace upcycle
