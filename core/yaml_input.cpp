#include "core/yaml_input.h"

#include <fstream>
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
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        throw UserError(source, "", "not valid YAML: " + std::string(e.what()));
    }
    if (!present(root)) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) throw UserError(source, "", "expected a mapping at the top level");
    return root;
}

std::string line_of(const YAML::Node& node) {
    if (!node.IsDefined()) return "";
    const auto mark = node.Mark();
    if (mark.line < 0) return "";
    return " (line " + std::to_string(mark.line + 1) + ")";
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

}  // namespace upcycle
