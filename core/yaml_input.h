#pragma once
// Reading YAML written by people — run configs (core/config) and sweeps (core/sweep) — with
// errors that name the file, the key and the line: parsing text, the line of a node, integral
// values written as "1e3", and `--set key.path=value` overrides applied to a tree.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace upcycle {

// The file's text; UserError(file, "", "cannot open the <what> file") if it cannot be read.
std::string read_yaml_file(const std::filesystem::path& file, const std::string& what);

// The document as a mapping (an empty document is an empty mapping). UserError (file =
// source) for text that is not YAML or not a mapping at the top level.
YAML::Node parse_yaml_mapping(const std::string& text, const std::string& source);

// " (line N)" for a node of a file read by parse_yaml_mapping, "" for one without a place in
// it: made, from --set, or copied by with_value (yaml-cpp's Clone loses the marks).
std::string line_of(const YAML::Node& node);

// An override as applied to a tree: its path there and the assignment as written.
struct AppliedOverride {
    std::vector<std::string> path;
    std::string assignment;
};

// Whether an error message already says where its value came from (see origin_of).
bool has_origin(const std::string& message);

// Where the value of `key` (its path in the tree) came from, for an error about a tree that
// overrides or a sweep point rebuilt without marks: " (from --set ASSIGNMENT)" when an override
// set that key, one above it or one below it; else " (line N)" of the key in the tree as
// written (`original`); else "".
std::string origin_of(const std::vector<std::string>& key, const YAML::Node& original,
                      const std::vector<AppliedOverride>& overrides);

// The text of a mapping key. UserError (file = source, key = within, the dotted path of the
// mapping, "" at the top level) for a key that is a list, a mapping or empty: valid YAML
// (`[1, 5]: 2`), but never a config key.
std::string key_name(const YAML::Node& key, const std::string& source, const std::string& within);

// The value as an integer of type T; yaml-cpp reads "1e3" as no integer type, so an
// integral-valued number in range is accepted too. nullopt if it is neither.
template <class T>
std::optional<T> integral_value(const YAML::Node& node) {
    try {
        return node.as<T>();
    } catch (const YAML::BadConversion&) {
    }
    try {
        const double value = node.as<double>();
        const bool in_range = value >= static_cast<double>(std::numeric_limits<T>::min()) &&
                              value <= static_cast<double>(std::numeric_limits<T>::max());
        if (std::floor(value) == value && in_range) return static_cast<T>(value);
    } catch (const YAML::BadConversion&) {
    }
    return std::nullopt;
}

// "a.b.c" → {"a", "b", "c"}; a trailing or doubled dot gives an empty key (which callers refuse).
std::vector<std::string> split_dotted(const std::string& dotted);

// One `--set key.path=value`: the dotted key and its value parsed as YAML, without marks (it has
// no line in the file). UserError (file "--set") when it is not key=value or the value is not
// YAML.
struct Override {
    std::string key;
    YAML::Node value;
};
Override parse_override(const std::string& assignment);

// `tree` with each `--set key=value` applied in order (a later one wins), and each recorded
// in `applied` with its path; path_of maps an override's dotted key to its path in the tree
// (and may throw a UserError for a key it refuses).
YAML::Node apply_overrides(
    const YAML::Node& tree, const std::vector<std::string>& overrides,
    const std::function<std::vector<std::string>(const std::string&)>& path_of,
    std::vector<AppliedOverride>& applied);

// A copy of `tree` with tree[keys[i]][keys[i+1]]… = value, creating mappings on the way;
// `tree` itself is unchanged. The copy has no lines (see line_of, origin_of). UserError
// (file = source) when a key on the way holds a value instead of a mapping. unmarked_key: the
// last key is a new node without a line (an override's key is not in the file).
YAML::Node with_value(const YAML::Node& tree, const std::vector<std::string>& keys, std::size_t i,
                      const YAML::Node& value, const std::string& source,
                      bool unmarked_key = false);

}  // namespace upcycle
