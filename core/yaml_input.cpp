#include "core/yaml_input.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "core/errors.h"

namespace upcycle {

namespace {

bool present(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

std::string join_keys(const std::vector<std::string>& keys, std::size_t count) {
    std::string out;
    for (std::size_t i = 0; i < count; ++i) out += (i ? "." : "") + keys[i];
    return out;
}

std::string key_text(const YAML::Node& key) { return key.IsScalar() ? key.Scalar() : "?"; }

// A copy of `node` with no source marks: values from --set have no line in the file.
YAML::Node without_marks(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Scalar: return YAML::Node(node.Scalar());
        case YAML::NodeType::Sequence: {
            YAML::Node out(YAML::NodeType::Sequence);
            for (const auto& item : node) out.push_back(without_marks(item));
            return out;
        }
        case YAML::NodeType::Map: {
            YAML::Node out(YAML::NodeType::Map);
            for (const auto& entry : node) out[key_text(entry.first)] = without_marks(entry.second);
            return out;
        }
        default: return YAML::Node();
    }
}

// line_of(tree[path[i]][path[i+1]]…), read through const nodes: a lookup never inserts.
std::string line_at(const YAML::Node& tree, const std::vector<std::string>& path, std::size_t i) {
    if (i == path.size()) return line_of(tree);
    if (!tree.IsMap()) return "";
    const YAML::Node child = tree[path[i]];
    return child.IsDefined() ? line_at(child, path, i + 1) : "";
}

// YAML forbids a key twice in one mapping, but yaml-cpp keeps both and a lookup finds the
// first: `channels: 64` then `channels: 128` would silently train with 64.
void refuse_duplicate_keys(const YAML::Node& node, const std::string& prefix,
                           const std::string& source) {
    if (node.IsSequence()) {
        for (const auto& item : node) refuse_duplicate_keys(item, prefix, source);
        return;
    }
    if (!node.IsMap()) return;
    std::map<std::string, YAML::Node> seen;
    for (const auto& entry : node) {
        const std::string key = key_text(entry.first);
        const std::string path = prefix.empty() ? key : prefix + "." + key;
        const auto [first, inserted] = seen.emplace(key, entry.first);
        if (!inserted) {
            throw UserError(source, path,
                            "appears twice in one mapping" + line_of(first->second) + " and again" +
                                line_of(entry.first) + "; keep one");
        }
        refuse_duplicate_keys(entry.second, path, source);
    }
}

}  // namespace

std::string read_yaml_file(const std::filesystem::path& file, const std::string& what) {
    std::ifstream in(file);
    if (!in) throw UserError(file.string(), "", "cannot open the " + what + " file");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

YAML::Node parse_yaml_mapping(const std::string& text, const std::string& source) {
    YAML::Node root;
    try {
        // One newline first: yaml-cpp's 0-based line of every node of the file is then its
        // 1-based line in the file, and line 0 is left to nodes it made (see line_of).
        root = YAML::Load("\n" + text);
    } catch (const YAML::ParserException& e) {
        throw UserError(source, "",
                        "not valid YAML at line " + std::to_string(e.mark.line) + ", column " +
                            std::to_string(e.mark.column + 1) + ": " + e.msg);
    }
    if (!present(root)) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) throw UserError(source, "", "expected a mapping at the top level");
    refuse_duplicate_keys(root, "", source);
    return root;
}

std::string line_of(const YAML::Node& node) {
    if (!node.IsDefined()) return "";
    // parse_yaml_mapping puts the file's first line at yaml-cpp's line 1; line 0 is the zero
    // mark yaml-cpp gives the nodes it makes or copies (Clone), -1 its null mark
    const int line = node.Mark().line;
    return line >= 1 ? " (line " + std::to_string(line) + ")" : "";
}

bool has_origin(const std::string& message) {
    return message.find(" (line ") != std::string::npos ||
           message.find(" (from --set ") != std::string::npos;
}

std::string origin_of(const std::vector<std::string>& key, const YAML::Node& original,
                      const std::vector<AppliedOverride>& overrides) {
    const auto starts_with = [](const std::vector<std::string>& path,
                                const std::vector<std::string>& prefix) {
        return prefix.size() <= path.size() &&
               std::equal(prefix.begin(), prefix.end(), path.begin());
    };
    // the last override of the key wins, as it did when applied
    for (auto o = overrides.rbegin(); o != overrides.rend(); ++o) {
        if (starts_with(key, o->path) || starts_with(o->path, key)) {
            return " (from --set " + o->assignment + ")";
        }
    }
    return line_at(original, key, 0);
}

std::string key_name(const YAML::Node& key, const std::string& source, const std::string& within) {
    if (key.IsScalar()) return key.Scalar();
    const char* found = key.IsSequence() ? "a list" : key.IsMap() ? "a mapping" : "an empty key";
    throw UserError(source, within,
                    std::string("expected a key name, found ") + found + line_of(key));
}

std::vector<std::string> split_dotted(const std::string& dotted) {
    std::vector<std::string> parts;
    std::string part;
    std::istringstream in(dotted);
    while (std::getline(in, part, '.')) parts.push_back(part);
    if (!dotted.empty() && dotted.back() == '.') parts.emplace_back();
    return parts;
}

Override parse_override(const std::string& assignment) {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) {
        throw UserError("--set", assignment, "an override must look like key.path=value");
    }
    Override o;
    o.key = assignment.substr(0, eq);
    const std::string text = assignment.substr(eq + 1);
    if (text.find_first_not_of(" \t") == std::string::npos) {
        // YAML reads nothing as null, which would quietly leave the default in place
        throw UserError(
            "--set", o.key,
            "has no value: write " + o.key + "=VALUE (an empty string is " + o.key + "='')");
    }
    try {
        o.value = without_marks(YAML::Load(text));
    } catch (const YAML::Exception&) {
        throw UserError("--set", o.key, "cannot parse override value '" + text + "'");
    }
    return o;
}

// (Sharing nodes between trees, or inserting with a Node as key, crashes yaml-cpp 0.7: its
// memory holders are not merged by force_insert and Node-key lookups convert every key; hence
// clones and string keys.)
YAML::Node with_value(const YAML::Node& tree, const std::vector<std::string>& keys, std::size_t i,
                      const YAML::Node& value, const std::string& source, bool unmarked_key) {
    if (i == keys.size()) return value;
    if (present(tree) && !tree.IsMap()) {
        throw UserError(source, join_keys(keys, i), "expected a mapping" + line_of(tree));
    }
    YAML::Node root = present(tree) ? YAML::Clone(tree) : YAML::Node(YAML::NodeType::Map);
    YAML::Node current;
    current.reset(root);
    for (std::size_t j = i; j + 1 < keys.size(); ++j) {
        YAML::Node next = current[keys[j]];
        if (!present(next)) {
            current[keys[j]] = YAML::Node(YAML::NodeType::Map);
        } else if (!next.IsMap()) {
            throw UserError(source, join_keys(keys, j + 1), "expected a mapping" + line_of(next));
        }
        YAML::Node child_node = current[keys[j]];
        current.reset(child_node);
    }
    if (unmarked_key) current.remove(keys.back());
    current[keys.back()] = YAML::Clone(value);
    return root;
}

YAML::Node apply_overrides(
    const YAML::Node& tree, const std::vector<std::string>& overrides,
    const std::function<std::vector<std::string>(const std::string&)>& path_of,
    std::vector<AppliedOverride>& applied) {
    YAML::Node root = tree;
    for (const auto& assignment : overrides) {
        const Override o = parse_override(assignment);
        applied.push_back({path_of(o.key), assignment});
        // reset() rebinds the handle; `=` would overwrite the node it shares with the tree
        root.reset(with_value(root, applied.back().path, 0, o.value, "--set",
                              /*unmarked_key=*/true));
    }
    return root;
}

}  // namespace upcycle
