#include "core/config.h"

#include "core/backend.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/errors.h"
#include "core/yaml_input.h"

namespace upcycle {

// ---- the one list of fields per section ---------------------------------------------------
template <class Visitor>
void visit_fields(MoeConfig& c, Visitor&& v) {
    v("experts", c.experts);
    v("layers", c.layers);
    v("router", c.router);
    v("k", c.k);
    v("capacity_factor", c.capacity_factor);
    v("eval_capacity_factor", c.eval_capacity_factor);
    v("combine", c.combine);
    v("priority", c.priority);
    v("aux_loss_coef", c.aux_loss_coef);
    v("z_loss_coef", c.z_loss_coef);
}
template <class Visitor>
void visit_fields(ModelConfig& c, Visitor&& v) {
    v("arch", c.arch);
    v("vocab_size", c.vocab_size);
    v("context", c.context);
    v("channels", c.channels);
    v("layers", c.layers);
    v("heads", c.heads);
    v("moe", c.moe);  // a nested section
    v("patch", c.patch);
    v("image_size", c.image_size);
    v("classes", c.classes);
}
template <class Visitor>
void visit_fields(DataConfig& c, Visitor&& v) {
    v("source", c.source);
    v("path", c.path);
    v("train_glob", c.train_glob);
    v("val_glob", c.val_glob);
    v("validation_fraction", c.validation_fraction);
    v("synthetic_bytes", c.synthetic_bytes);
    v("synthetic_seed", c.synthetic_seed);
    v("validation_images", c.validation_images);
    v("train_images", c.train_images);
    v("augment", c.augment);
    v("crop_padding", c.crop_padding);
}
template <class Visitor>
void visit_fields(TrainConfig& c, Visitor&& v) {
    v("batch_size", c.batch_size);
    v("steps", c.steps);
    v("schedule", c.schedule);
    v("lr", c.lr);
    v("warmup_steps", c.warmup_steps);
    v("min_lr_ratio", c.min_lr_ratio);
    v("beta1", c.beta1);
    v("beta2", c.beta2);
    v("eps", c.eps);
    v("weight_decay", c.weight_decay);
    v("grad_clip", c.grad_clip);
    v("micro_batch", c.micro_batch);
    v("precision", c.precision);
    v("expert_parallel", c.expert_parallel);
    v("seed", c.seed);
    v("log_every", c.log_every);
    v("zero_stage", c.zero_stage);
}
template <class Visitor>
void visit_fields(EvalConfig& c, Visitor&& v) {
    v("every", c.every);
    v("max_windows", c.max_windows);
    v("max_images", c.max_images);
    v("probe_shots", c.probe_shots);
    v("probe_seeds", c.probe_seeds);
    v("probe_ridge", c.probe_ridge);
}
template <class Visitor>
void visit_fields(CheckpointConfig& c, Visitor&& v) {
    v("every", c.every);
    v("every_seconds", c.every_seconds);
}
// Sections of RunConfig; "name" is the one top-level scalar.
template <class Visitor>
void visit_sections(RunConfig& c, Visitor&& v) {
    v("model", c.model);
    v("data", c.data);
    v("train", c.train);
    v("eval", c.eval);
    v("checkpoint", c.checkpoint);
}

namespace {

// A field that is itself a struct of fields (e.g. model.moe) is a nested section.
template <class T>
concept NestedSection = std::is_class_v<T> && !std::is_same_v<T, std::string>;

template <class T>
std::string type_name() {
    if constexpr (std::is_same_v<T, std::string>)
        return "a string";
    else if constexpr (Choice<T>)
        return choice_list(choice_names<T>());
    else if constexpr (std::is_same_v<T, bool>)
        return "true or false";
    else if constexpr (std::is_floating_point_v<T>)
        return "a number";
    else if constexpr (std::is_unsigned_v<T>)
        return "a non-negative integer";
    else
        return "an integer";
}

template <class T>
T yaml_scalar(const YAML::Node& node, const std::string& key, const std::string& source) {
    if (!node.IsScalar()) {
        throw UserError(source, key, "expected " + type_name<T>() + line_of(node));
    }
    const auto wrong = [&] {
        return UserError(
            source, key,
            "expected " + type_name<T>() + ", found '" + node.Scalar() + "'" + line_of(node));
    };
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        if (const auto value = integral_value<T>(node)) return *value;
        throw wrong();
    } else {
        T value{};
        try {
            value = node.as<T>();
        } catch (const YAML::BadConversion&) {
            throw wrong();
        }
        if constexpr (std::is_floating_point_v<T>) {
            // YAML spells them .nan and .inf; no setting means anything by them
            if (!std::isfinite(value)) {
                throw UserError(
                    source, key,
                    "expected a finite number, found '" + node.Scalar() + "'" + line_of(node));
            }
        }
        return value;
    }
}

template <class Section>
std::vector<std::string> field_names(Section& section) {
    std::vector<std::string> names;
    visit_fields(section, [&](const char* key, auto&) { names.emplace_back(key); });
    return names;
}

std::vector<std::string> section_names() {
    RunConfig scratch;
    std::vector<std::string> names{"name"};
    visit_sections(scratch, [&](const char* key, auto&) { names.emplace_back(key); });
    return names;
}

template <class Section>
void read_section(const YAML::Node& node, Section& section, const std::string& prefix,
                  const std::string& source) {
    if (!node.IsMap()) throw UserError(source, prefix, "expected a mapping" + line_of(node));
    std::set<std::string> known;
    visit_fields(section, [&](const char* key, auto& field) {
        known.insert(key);
        const YAML::Node child = node[key];
        if (!child || child.IsNull()) return;
        using T = std::decay_t<decltype(field)>;
        const std::string path = prefix + "." + key;
        if constexpr (NestedSection<T>) {
            read_section(child, field, path, source);
        } else if constexpr (Choice<T>) {
            const auto text = yaml_scalar<std::string>(child, path, source);
            const auto value = find_choice<T>(text);
            if (!value) {
                throw UserError(source, path,
                                choice_error(choice_names<T>(), text) + line_of(child));
            }
            field = *value;
        } else if constexpr (std::is_same_v<T, std::string>) {
            // a list of scalars is kept as "a,b,c" (e.g. model.moe.layers: [1, 3])
            if (child.IsSequence()) {
                std::string joined;
                for (const auto& item : child) {
                    if (!joined.empty()) joined += ",";
                    joined += yaml_scalar<std::string>(item, path, source);
                }
                field = joined;
            } else {
                field = yaml_scalar<T>(child, path, source);
            }
        } else {
            field = yaml_scalar<T>(child, path, source);
        }
    });
    for (const auto& entry : node) {
        const std::string key = key_name(entry.first, source, prefix);
        if (!known.count(key)) {
            throw_unknown_key(source, prefix + "." + key, key, field_names(section),
                              line_of(entry.first));
        }
    }
}

template <class Section>
nlohmann::json section_to_json(Section& section) {
    nlohmann::json fields = nlohmann::json::object();
    visit_fields(section, [&](const char* key, auto& field) {
        using T = std::decay_t<decltype(field)>;
        if constexpr (NestedSection<T>)
            fields[key] = section_to_json(field);
        else
            fields[key] = field;
    });
    return fields;
}

template <class Section>
void section_from_json(const nlohmann::json& fields, Section& section, const std::string& prefix,
                       const std::string& source) {
    if (!fields.is_object()) throw UserError(source, prefix, "expected a JSON object");
    visit_fields(section, [&](const char* key, auto& field) {
        if (!fields.contains(key)) return;
        using T = std::decay_t<decltype(field)>;
        const std::string path = prefix + "." + key;
        if constexpr (NestedSection<T>) {
            section_from_json(fields[key], field, path, source);
        } else if constexpr (Choice<T>) {
            if (!fields[key].is_string())
                throw UserError(source, path, "expected " + type_name<T>());
            field = parse_choice<T>(fields[key].template get<std::string>(), source, path);
        } else {
            try {
                field = fields[key].template get<T>();
            } catch (const nlohmann::json::exception&) {
                throw UserError(source, path, "expected " + type_name<T>());
            }
        }
    });
}

RunConfig read_run_config(const YAML::Node& root, const std::string& source) {
    RunConfig config;
    if (!root || root.IsNull()) return config;
    if (!root.IsMap()) throw UserError(source, "", "expected a mapping at the top level");
    const auto known = section_names();
    for (const auto& entry : root) {
        const std::string key = key_name(entry.first, source, "");
        if (std::find(known.begin(), known.end(), key) == known.end()) {
            throw_unknown_key(source, key, key, known, line_of(entry.first));
        }
    }
    if (root["name"]) config.name = yaml_scalar<std::string>(root["name"], "name", source);
    // model.preset fills the model shape first; explicit keys then override it.
    YAML::Node model = root["model"];
    if (model && model.IsMap() && model["preset"]) {
        const auto preset_name = yaml_scalar<std::string>(model["preset"], "model.preset", source);
        try {
            config.model = find_model_preset(preset_name).model;
        } catch (const UserError& e) {
            throw UserError(source, "model.preset", e.what());
        }
        YAML::Node rest(YAML::NodeType::Map);
        for (const auto& entry : model) {
            const std::string key = key_name(entry.first, source, "model");
            if (key != "preset") rest[key] = entry.second;
        }
        model = rest;
    }
    visit_sections(config, [&](const char* key, auto& section) {
        YAML::Node node = std::string(key) == "model" ? model : root[key];
        if (!node || node.IsNull()) return;
        read_section(node, section, key, source);
    });
    return config;
}

}  // namespace

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source,
                           const std::vector<std::string>& overrides) {
    const YAML::Node original = parse_yaml_mapping(yaml_text, source);
    std::vector<AppliedOverride> applied;
    const YAML::Node root = apply_overrides(original, overrides, split_dotted, applied);
    try {
        RunConfig config = read_run_config(root, source);
        validate(config, source);
        return config;
    } catch (const UserError& e) {
        // say where the value came from: an override, or its line in the file
        if (e.file() != source || has_origin(e.message())) throw;
        throw UserError(e.file(), e.key(),
                        e.message() + origin_of(split_dotted(e.key()), original, applied));
    }
}

RunConfig run_config_from_yaml(const YAML::Node& root, const std::string& source) {
    RunConfig config = read_run_config(root, source);
    validate(config, source);
    return config;
}

RunConfig load_run_config(const std::filesystem::path& file,
                          const std::vector<std::string>& overrides) {
    return parse_run_config(read_yaml_file(file, "config"), file.string(), overrides);
}

nlohmann::json to_json(const RunConfig& config_in) {
    RunConfig config = config_in;
    nlohmann::json out;
    out["name"] = config.name;
    visit_sections(config, [&](const char* section_key, auto& section) {
        out[section_key] = section_to_json(section);
    });
    return out;
}

namespace {

// A config key, as (section, field).
struct ConfigKey {
    const char* section;
    const char* field;
};
// Keys that only one architecture reads.
constexpr ConfigKey kTextOnlyKeys[] = {
    {"model", "vocab_size"},         {"model", "context"},        {"data", "path"},
    {"data", "validation_fraction"}, {"data", "synthetic_bytes"}, {"data", "synthetic_seed"},
    {"eval", "max_windows"},         {"data", "train_glob"},      {"data", "val_glob"},
};
constexpr ConfigKey kImageOnlyKeys[] = {
    {"model", "patch"},       {"model", "image_size"},
    {"model", "classes"},     {"data", "validation_images"},
    {"data", "train_images"}, {"data", "augment"},
    {"data", "crop_padding"}, {"eval", "max_images"},
    {"eval", "probe_shots"},  {"eval", "probe_seeds"},
    {"eval", "probe_ridge"},
};

// Keys added after trial hashes were first recorded: left out of a trial's identity while
// they hold their default, so every earlier trial keeps its hash (and is not run again).
constexpr ConfigKey kHashedOnlyWhenSetKeys[] = {
    {"train", "micro_batch"}, {"train", "precision"},  {"data", "train_glob"},
    {"data", "val_glob"},     {"train", "zero_stage"}, {"train", "expert_parallel"},
};

}  // namespace

nlohmann::json to_identity_json(const RunConfig& config) {
    nlohmann::json out = to_json(config);
    auto erase = [&](const auto& keys) {
        for (const auto& key : keys) out[key.section].erase(key.field);
    };
    if (config.model.arch == Arch::Vit)
        erase(kTextOnlyKeys);
    else
        erase(kImageOnlyKeys);
    const nlohmann::json defaults = to_json(RunConfig{});
    for (const auto& key : kHashedOnlyWhenSetKeys) {
        // (a key the architecture does not read is gone already; operator[] would add a null)
        if (out[key.section].contains(key.field) &&
            out[key.section][key.field] == defaults[key.section][key.field]) {
            out[key.section].erase(key.field);
        }
    }
    return out;
}

RunConfig run_config_from_json(const nlohmann::json& json, const std::string& source) {
    RunConfig config;
    if (!json.is_object()) throw UserError(source, "config", "expected a JSON object");
    if (json.contains("name")) {
        if (!json["name"].is_string()) throw UserError(source, "name", "expected a string");
        config.name = json["name"].get<std::string>();
    }
    visit_sections(config, [&](const char* section_key, auto& section) {
        if (json.contains(section_key))
            section_from_json(json[section_key], section, section_key, source);
    });
    return config;
}

int tokens_per_example(const ModelConfig& model) {
    if (model.arch == Arch::Vit) {
        const int side = model.image_size / model.patch;
        return 1 + side * side;
    }
    return model.context;
}

std::string describe_model(const ModelConfig& m) {
    const auto n = [](int value) { return std::to_string(value); };
    std::string text = m.arch == Arch::Vit ? "ViT" : "GPT";
    text += " L=" + n(m.layers) + " C=" + n(m.channels) + " H=" + n(m.heads);
    if (m.arch == Arch::Vit) {
        text += " patch=" + n(m.patch);
        text += " T=" + n(tokens_per_example(m));
    } else {
        text += " T=" + n(m.context);
        text += " V=" + n(m.vocab_size);
    }
    if (m.moe.experts > 0) {
        text += ", MoE E=" + n(m.moe.experts) + " " + to_string(m.moe.router);
        if (m.moe.router == RouterKind::TopK) text += " k=" + n(m.moe.k);
        text += " on blocks";
        const auto layers = moe_layer_indices(m);
        for (std::size_t i = 0; i < layers.size(); ++i) {
            text += i ? "," : " ";
            text += n(layers[i]);
        }
    }
    return text;
}

namespace {

// "a,b,c" (as read from a YAML list) → integers, or nullopt if a part is not one (leading and
// trailing spaces allowed).
std::optional<std::vector<int>> parse_int_list(const std::string& text) {
    std::vector<int> values;
    std::istringstream in(text);
    for (std::string part; std::getline(in, part, ',');) {
        std::size_t used = 0;
        int value = 0;
        try {
            value = std::stoi(part, &used);
        } catch (const std::exception&) {
            return std::nullopt;
        }
        if (part.find_first_not_of(' ', used) != std::string::npos) return std::nullopt;
        values.push_back(value);
    }
    return values;
}

}  // namespace

std::vector<int> probe_shot_counts(const EvalConfig& eval, const std::string& source) {
    if (eval.probe_shots.empty()) return {};
    const auto shots = parse_int_list(eval.probe_shots);
    if (!shots || std::any_of(shots->begin(), shots->end(), [](int n) { return n < 1; })) {
        throw UserError(source, "eval.probe_shots",
                        "expected a list of positive examples-per-class counts such as "
                        "[1, 5, 10] (or \"\" for no probe), found '" +
                            eval.probe_shots + "'");
    }
    return *shots;
}

std::vector<int> moe_layer_indices(const ModelConfig& model, const std::string& source) {
    std::vector<int> layers;
    if (model.moe.experts <= 0) return layers;
    const std::string& spec = model.moe.layers;
    if (spec == "every_other") {
        for (int l = 1; l < model.layers; l += 2) layers.push_back(l);
    } else if (spec == "all") {
        for (int l = 0; l < model.layers; ++l) layers.push_back(l);
    } else {
        const auto listed = parse_int_list(spec);
        const bool in_range = listed && std::all_of(listed->begin(), listed->end(), [&](int l) {
                                  return l >= 0 && l < model.layers;
                              });
        if (!in_range) {
            throw UserError(source, "model.moe.layers",
                            "expected every_other, all, or a list of block indices in [0, " +
                                std::to_string(model.layers) + "), found '" + spec + "'");
        }
        for (const int value : *listed) {
            if (std::find(layers.begin(), layers.end(), value) != layers.end()) {
                throw UserError(source, "model.moe.layers",
                                "block " + std::to_string(value) + " is listed twice");
            }
            layers.push_back(value);
        }
        std::sort(layers.begin(), layers.end());
    }
    return layers;
}

namespace {

// Every number of a config is finite, however it was made (YAML, --set, a checkpoint's JSON,
// a command-line flag): NaN passes every range check written as a comparison that fails.
template <class Section>
void require_finite_numbers(Section& section, const std::string& prefix,
                            const std::string& source) {
    visit_fields(section, [&](const char* key, auto& field) {
        using T = std::decay_t<decltype(field)>;
        const std::string path = prefix + "." + key;
        if constexpr (NestedSection<T>) {
            require_finite_numbers(field, path, source);
        } else if constexpr (std::is_floating_point_v<T>) {
            if (!std::isfinite(field)) {
                throw UserError(source, path,
                                "expected a finite number, found " + std::to_string(field));
            }
        }
    });
}

// Far beyond any transformer trained; per-block tables (the MoE block list, the parameter
// layout) are built from the config, so an absurd depth must be refused before they are.
constexpr int kMaxLayers = 1 << 16;

}  // namespace

void validate(const RunConfig& config, const std::string& source) {
    RunConfig c = config;  // visit_fields takes its sections by reference
    visit_sections(
        c, [&](const char* key, auto& section) { require_finite_numbers(section, key, source); });
    auto require = [&](bool ok, const std::string& key, const std::string& expected) {
        if (!ok) throw UserError(source, key, expected);
    };
    const bool vit = c.model.arch == Arch::Vit;
    require(c.model.vocab_size > 0, "model.vocab_size", "expected a positive integer");
    require(c.model.context > 0, "model.context", "expected a positive integer");
    require(c.model.channels > 0, "model.channels", "expected a positive integer");
    require(c.model.layers > 0, "model.layers", "expected a positive integer");
    require(c.model.layers <= kMaxLayers, "model.layers",
            "expected at most " + std::to_string(kMaxLayers) + " blocks, found " +
                std::to_string(c.model.layers));
    require(c.model.heads > 0, "model.heads", "expected a positive integer");
    require(c.model.channels % c.model.heads == 0, "model.heads",
            "channels (" + std::to_string(c.model.channels) + ") must be divisible by heads (" +
                std::to_string(c.model.heads) + ")");
    if (vit) {
        require(c.model.patch > 0, "model.patch", "expected a positive integer");
        require(c.model.image_size > 0 && c.model.image_size % c.model.patch == 0, "model.patch",
                "the patch side (" + std::to_string(c.model.patch) +
                    ") must divide model.image_size (" + std::to_string(c.model.image_size) + ")");
        require(c.model.classes >= 2, "model.classes", "expected at least 2");
        require(c.data.source == DataSource::FashionMnist, "data.source",
                "a vit trains on images: expected fashion_mnist, found '" +
                    to_string(c.data.source) + "'");
        require(c.model.image_size == 28, "model.image_size",
                "Fashion-MNIST images are 28×28, found " + std::to_string(c.model.image_size));
        require(c.model.classes == 10, "model.classes",
                "Fashion-MNIST has 10 classes, found " + std::to_string(c.model.classes));
        require(c.data.validation_images >= c.model.classes, "data.validation_images",
                "expected at least one image per class (" + std::to_string(c.model.classes) + ")");
        require(c.data.train_images >= 0, "data.train_images",
                "expected a non-negative integer (0: all)");
        require(c.data.crop_padding >= 0, "data.crop_padding", "expected a non-negative integer");
        require(c.eval.max_images >= 0, "eval.max_images",
                "expected a non-negative integer (0: all)");
        probe_shot_counts(c.eval, source);  // throws on a malformed list
        require(c.eval.probe_seeds >= 1, "eval.probe_seeds", "expected a positive integer");
        require(c.eval.probe_ridge > 0, "eval.probe_ridge", "expected a positive number");
    } else if (c.data.source == DataSource::Tokens) {
        // token ids are checked against model.vocab_size when the files are opened; the
        // globs too (an imported checkpoint has none until its continuation names its data)
    } else {
        // every other text source is bytes
        require(c.model.vocab_size >= 256, "model.vocab_size",
                "byte-level text needs at least 256, found " + std::to_string(c.model.vocab_size));
        require(c.data.source != DataSource::FashionMnist, "data.source",
                "a gpt trains on text: expected kjv, synthetic, text or tokens, found '" +
                    to_string(c.data.source) + "'");
    }
    const MoeConfig& moe = c.model.moe;
    require(moe.experts >= 0, "model.moe.experts", "expected a non-negative integer (0: dense)");
    if (moe.experts > 0) {
        require(!(moe.router == RouterKind::ExpertChoice && c.model.arch == Arch::Gpt),
                "model.moe.router",
                "expert_choice routing is refused in a causal (GPT) model: each expert picks its "
                "top tokens across the whole sequence, so a token's output would depend on "
                "later tokens (it leaks the future); use topk");
        require(moe.k >= 1 && moe.k <= moe.experts, "model.moe.k",
                "expected 1 ≤ k ≤ experts (" + std::to_string(moe.experts) + "), found " +
                    std::to_string(moe.k));
        require(moe.aux_loss_coef >= 0, "model.moe.aux_loss_coef",
                "expected a non-negative number");
        require(moe.z_loss_coef >= 0, "model.moe.z_loss_coef", "expected a non-negative number");
        // throws on a malformed list
        require(!moe_layer_indices(c.model, source).empty(), "model.moe.layers",
                "selects no block of a " + std::to_string(c.model.layers) + "-layer model");
    }
    require(c.data.source != DataSource::Text || !c.data.path.empty(), "data.path",
            "data.source: text needs data.path (a text file)");
    require(c.data.validation_fraction > 0 && c.data.validation_fraction < 1,
            "data.validation_fraction", "expected a number in (0, 1)");
    require(c.data.synthetic_bytes >= 1024, "data.synthetic_bytes", "expected at least 1024");
    require(c.train.batch_size > 0, "train.batch_size", "expected a positive integer");
    require(c.train.steps > 0, "train.steps", "expected a positive integer");
    require(c.train.lr > 0, "train.lr", "expected a positive number");
    require(c.train.warmup_steps >= 0, "train.warmup_steps", "expected a non-negative integer");
    require(c.train.min_lr_ratio >= 0 && c.train.min_lr_ratio <= 1, "train.min_lr_ratio",
            "expected a number in [0, 1]");
    require(c.train.beta1 >= 0 && c.train.beta1 < 1, "train.beta1", "expected a number in [0, 1)");
    require(c.train.beta2 >= 0 && c.train.beta2 < 1, "train.beta2", "expected a number in [0, 1)");
    require(c.train.eps > 0, "train.eps", "expected a positive number");
    require(c.train.weight_decay >= 0, "train.weight_decay", "expected a non-negative number");
    require(c.train.grad_clip >= 0, "train.grad_clip", "expected a non-negative number (0: off)");
    require(c.train.micro_batch >= 0 && c.train.micro_batch <= c.train.batch_size &&
                (c.train.micro_batch == 0 || c.train.batch_size % c.train.micro_batch == 0),
            "train.micro_batch",
            "expected 0 (no accumulation) or a divisor of train.batch_size (" +
                std::to_string(c.train.batch_size) + "), found " +
                std::to_string(c.train.micro_batch));
    require(c.train.log_every > 0, "train.log_every", "expected a positive integer");
    const std::string zero_stage = std::to_string(c.train.zero_stage);
    require(c.train.zero_stage == 0 || c.train.zero_stage == 1, "train.zero_stage",
            "expected 0 (every rank keeps all optimizer moments) or 1 (each rank keeps a shard), "
            "found " +
                zero_stage);
    require(c.eval.every >= 0, "eval.every", "expected a non-negative integer");
    require(c.eval.max_windows >= 0, "eval.max_windows", "expected a non-negative integer");
    require(c.checkpoint.every >= 0, "checkpoint.every", "expected a non-negative integer");
    require(c.checkpoint.every_seconds >= 0, "checkpoint.every_seconds",
            "expected a non-negative number");
}

const std::vector<ModelPreset>& model_presets() {
    static const std::vector<ModelPreset> presets = {
        {"gpt-tiny", ModelConfig{Arch::Gpt, 256, 128, 128, 4, 4, {}}, 16},
        {"gpt-small", ModelConfig{Arch::Gpt, 256, 256, 512, 8, 8, {}}, 8},
        {"gpt-124m", ModelConfig{Arch::Gpt, 50304, 1024, 768, 12, 12, {}}, 8},
        // the vision issue's benchmark shape: patch 4 on 28×28 (T = 50), C 128, L 6, H 4
        {"vit-tiny",
         ModelConfig{
             .arch = Arch::Vit, .channels = 128, .layers = 6, .heads = 4, .moe = {}, .patch = 4},
         128},
    };
    return presets;
}

const ModelPreset& find_model_preset(const std::string& name) {
    std::vector<std::string> names;
    for (const auto& preset : model_presets()) {
        if (preset.name == name) return preset;
        names.push_back(preset.name);
    }
    std::string message = "unknown model preset '" + name + "'";
    const auto suggestion = closest_match(name, names);
    if (!suggestion.empty())
        message += "; did you mean '" + suggestion + "'?";
    else {
        message += "; expected one of:";
        for (const auto& n : names) message += " " + n;
    }
    throw UserError("", "model", message);
}

void throw_unknown_key(const std::string& source, const std::string& key, const std::string& leaf,
                       const std::vector<std::string>& known, const std::string& where) {
    std::string message = "unknown key" + where;
    const std::string suggestion = closest_match(leaf, known);
    if (!suggestion.empty()) {
        message += "; did you mean '" + suggestion + "'?";
    } else if (known.empty()) {
        message += "; it takes no keys";
    } else {
        message += "; expected one of:";
        for (const auto& k : known) message += " " + k;
    }
    throw UserError(source, key, message);
}

}  // namespace upcycle
