#include "runner/json_file.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

namespace {

template <class T>
bool holds(const nlohmann::json& v) {
    if constexpr (std::is_same_v<T, std::string>) return v.is_string();
    if constexpr (std::is_same_v<T, bool>) return v.is_boolean();
    if constexpr (std::is_same_v<T, int64_t>) return v.is_number_integer();
    // a double may be null: nlohmann writes a non-finite number as null
    if constexpr (std::is_same_v<T, double>) return v.is_number() || v.is_null();
}

template <class T>
const char* type_name() {
    if constexpr (std::is_same_v<T, std::string>) return "a string";
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_same_v<T, int64_t>) return "an integer";
    if constexpr (std::is_same_v<T, double>) return "a number";
}

const nlohmann::json& field(const nlohmann::json& object, const std::string& key,
                            const std::filesystem::path& file, const std::string& prefix,
                            const char* expected) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    const auto it = object.find(key);
    if (it == object.end()) {
        throw UserError(file.string(), name, fmt::format("missing; expected {}", expected));
    }
    return *it;
}

// concurrent writers on several nodes of a shared folder may have the same PID
std::string host_name() {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0) return "unknown";
    return host;
}

}  // namespace

void write_json_atomically(const std::filesystem::path& path, const nlohmann::json& value) {
    const auto tmp = path.parent_path() / fmt::format(".{}.tmp-{}-{}", path.filename().string(),
                                                      host_name(), static_cast<long>(getpid()));
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << value.dump(2) << '\n';
        out.flush();
        if (!out) {
            std::error_code ignored;
            std::filesystem::remove(tmp, ignored);
            throw UserError(path.string(), "", "cannot write (check the disk and permissions)");
        }
    }
    std::filesystem::rename(tmp, path);
}

nlohmann::json read_json_object(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw UserError(path.string(), "", "cannot read the file");
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json value;
    try {
        value = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::parse_error& e) {
        throw UserError(path.string(), "", fmt::format("not valid JSON ({})", e.what()));
    }
    if (!value.is_object()) throw UserError(path.string(), "", "expected a JSON object");
    return value;
}

template <class T>
T json_field(const nlohmann::json& object, const std::string& key,
             const std::filesystem::path& file, const std::string& prefix) {
    const auto& v = field(object, key, file, prefix, type_name<T>());
    if (!holds<T>(v)) {
        throw UserError(file.string(), prefix.empty() ? key : prefix + "." + key,
                        fmt::format("expected {}, got {}", type_name<T>(), v.dump()));
    }
    if constexpr (std::is_same_v<T, double>) {
        if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
    }
    return v.template get<T>();
}

template std::string json_field<std::string>(const nlohmann::json&, const std::string&,
                                             const std::filesystem::path&, const std::string&);
template bool json_field<bool>(const nlohmann::json&, const std::string&,
                               const std::filesystem::path&, const std::string&);
template int64_t json_field<int64_t>(const nlohmann::json&, const std::string&,
                                     const std::filesystem::path&, const std::string&);
template double json_field<double>(const nlohmann::json&, const std::string&,
                                   const std::filesystem::path&, const std::string&);

const nlohmann::json& json_object_field(const nlohmann::json& object, const std::string& key,
                                        const std::filesystem::path& file,
                                        const std::string& prefix) {
    const auto& v = field(object, key, file, prefix, "an object");
    if (!v.is_object()) {
        throw UserError(file.string(), prefix.empty() ? key : prefix + "." + key,
                        fmt::format("expected an object, got {}", v.dump()));
    }
    return v;
}

}  // namespace upcycle
