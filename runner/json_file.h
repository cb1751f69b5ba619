#pragma once
// JSON files that cluster tasks and the submitting host hand each other through a shared
// folder (trial.json, result.json): written atomically (a temporary file renamed over the
// target, so a reader never sees half a file), read with errors that name the file and key.
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace upcycle {

// Writes `value` to path through a temporary file in the same folder and a rename.
void write_json_atomically(const std::filesystem::path& path, const nlohmann::json& value);

// The file's JSON object; a missing file, bad JSON or another type is a UserError naming it.
nlohmann::json read_json_object(const std::filesystem::path& path);

// object[key] as T; a missing key or a value of another type is a UserError naming the file,
// the key (dotted from `prefix`) and the type expected.
template <class T>
T json_field(const nlohmann::json& object, const std::string& key,
             const std::filesystem::path& file, const std::string& prefix = "");

// object[key] as an object (same errors).
const nlohmann::json& json_object_field(const nlohmann::json& object, const std::string& key,
                                        const std::filesystem::path& file,
                                        const std::string& prefix = "");

}  // namespace upcycle
