// upcycle inspect FILE [--json]: a checkpoint's tensors and metadata, its data checksum verified
// like every other reader's.
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "runner/commands.h"
#include "runner/format.h"

namespace upcycle::cli {

namespace {

struct InspectArgs {
    std::string file;
    bool json = false;
};

// Metadata values that hold JSON are shown as JSON.
nlohmann::json metadata_value(const std::string& text) {
    if (!text.empty() && (text.front() == '{' || text.front() == '[')) {
        try {
            return nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception&) {
        }
    }
    return text;
}

// Verifies the data checksum by reading the file as the other commands do (a mismatch is a
// UserError naming the file). False when there is nothing this reader can verify: no checksum
// in the header (a file from elsewhere), or tensors other than F32.
bool verify_checksum(const std::string& file, const SafetensorsHeader& header) {
    if (!header.metadata.count(kSafetensorsCrcKey)) return false;
    for (const auto& e : header.entries) {
        if (e.dtype != "F32") return false;
    }
    read_safetensors(file);
    return true;
}

int run_inspect(const InspectArgs& args) {
    const SafetensorsHeader header = read_safetensors_header(args.file);
    const bool verified = verify_checksum(args.file, header);
    int64_t weights = 0, optimizer = 0;
    for (const auto& e : header.entries) {
        (e.name.rfind("optimizer.", 0) == 0 ? optimizer : weights) += shape_numel(e.shape);
    }
    if (args.json) {
        nlohmann::json out;
        out["file"] = args.file;
        out["data_bytes"] = header.data_bytes;
        out["parameters"] = weights;
        out["optimizer_values"] = optimizer;
        out["checksum_verified"] = verified;
        for (const auto& e : header.entries) {
            out["tensors"].push_back({{"name", e.name}, {"dtype", e.dtype}, {"shape", e.shape}});
        }
        for (const auto& [key, value] : header.metadata)
            out["metadata"][key] = metadata_value(value);
        fmt::print("{}\n", out.dump(2));
        return 0;
    }
    fmt::print("{}: {} tensors, {} parameters{}, {:.1f} MB of data\n", args.file,
               header.entries.size(), format_count(static_cast<double>(weights)),
               optimizer ? " + optimizer state" : "", static_cast<double>(header.data_bytes) / 1e6);
    fmt::print("checksum: {}\n",
               verified ? "crc32 " + header.metadata.at(kSafetensorsCrcKey) + " matches the data"
                        : std::string("none to verify (not written by upcycle)"));
    std::size_t width = 4;
    for (const auto& e : header.entries) width = std::max(width, e.name.size());
    for (const auto& e : header.entries) {
        fmt::print("  {:<{}}  {}  {}\n", e.name, width, e.dtype, shape_string(e.shape));
    }
    // the MoE structure, from the stored config
    if (const auto it = header.metadata.find("upcycle.config"); it != header.metadata.end()) {
        const auto config = metadata_value(it->second);
        if (config.is_object() && config.contains("model") && config["model"].contains("moe")) {
            const auto& moe = config["model"]["moe"];
            if (moe.is_object() && moe.contains("experts") && moe["experts"].is_number() &&
                moe["experts"].get<double>() > 0) {
                int moe_blocks = 0;
                std::string blocks;
                for (const auto& e : header.entries) {
                    const auto pos = e.name.find(".mlp.router.weight");
                    if (pos == std::string::npos) continue;
                    blocks += (moe_blocks++ ? "," : "") + e.name.substr(7, pos - 7);
                }
                // printed as stored (inspect shows a file, even one other readers refuse)
                const auto field = [&](const char* key) {
                    const auto it = moe.find(key);
                    if (it == moe.end()) return std::string("?");
                    return it->is_string() ? it->get<std::string>() : it->dump();
                };
                fmt::print(
                    "MoE: {} experts in blocks {} | router {} k={} | capacity factor {} "
                    "(eval {}) | combine {} | aux {} z {}\n",
                    field("experts"), blocks, field("router"), field("k"), field("capacity_factor"),
                    field("eval_capacity_factor"), field("combine"), field("aux_loss_coef"),
                    field("z_loss_coef"));
            }
        }
    }
    fmt::print("metadata:\n");
    for (const auto& [key, value] : header.metadata) {
        const auto parsed = metadata_value(value);
        if (parsed.is_string())
            fmt::print("  {}: {}\n", key, value);
        else
            fmt::print("  {}: {}\n", key, parsed.dump(2));
    }
    return 0;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
    auto args = std::make_shared<InspectArgs>();
    auto* sub = app.add_subcommand("inspect", "List a checkpoint's tensors and metadata");
    sub->add_option("file", args->file, "checkpoint (.safetensors)")->required();
    sub->add_flag("--json", args->json, "print JSON");
    return [args] { return run_inspect(*args); };
}

}  // namespace upcycle::cli
