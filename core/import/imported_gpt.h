#pragma once
// A dense GPT-2 read from another tool's files (Hugging Face, core/import/hf_gpt2.h; llm.c,
// core/import/llmc_gpt2.h) becomes a native checkpoint (core/checkpoint.h) with a declared
// sunk cost: the training someone else spent on it, which budgets are percentages of.
//
// The checkpoint: the run config's defaults with the source's model and data.source tokens
// (the files unset unless overridden: a continuation names them; model.context may be
// lowered by an override: the first T learned positions are kept), every weight in our names
// and nn.Linear layout, no optimizer state, and a TrainingState of step 0 (the source's step
// counter is unknown: a continuation's LR schedule warms up again from 0), tokens = the
// declared tokens (0 when only FLOPs were declared), flops = the declared sunk FLOPs, seconds 0.
// Its __metadata__ adds "upcycle.import" (kImportKey): JSON
//   {"format": "hf_gpt2" | "llmc_gpt2", "source": the path given, "sha256": of the weights file,
//    "sunk_flops": F, "sunk_tokens": N or null, "declared": "tokens" | "flops"}
// which surgery keeps (write_checkpoint copies metadata) and sweeps read for the sunk cost.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/safetensors.h"

namespace upcycle {

inline constexpr const char* kImportKey = "upcycle.import";

// The weights of a dense GPT as another tool stored them, already in our names and layout.
struct ImportedGpt {
    ModelConfig model;                          // dense: V, T, C, L, H of the source
    std::map<std::string, HostTensor> weights;  // parameter_layout(model) names, [out, in]
    std::string format;                         // "hf_gpt2" | "llmc_gpt2"
    std::filesystem::path weights_file;         // hashed into the import record
};

// The training a source model cost, as the user declares it (exactly one of the two).
struct SunkCost {
    std::optional<double> tokens;  // training tokens; FLOPs = tokens × flops_per_token(model)
    std::optional<double> flops;   // training FLOPs
};

// What "upcycle.import" holds.
struct ImportRecord {
    std::string format;
    std::string source;
    std::string sha256;
    double sunk_flops = 0;
    std::optional<double> sunk_tokens;
    std::string declared;  // "tokens" | "flops"
};

// The native checkpoint of an imported model. overrides ("key.path=value", as --set) apply to
// the run config; the model may only lower model.context (UserError naming the key otherwise).
// UserError (key --sunk-tokens / --sunk-flops) unless exactly one sunk cost is declared, and it
// is finite and positive.
Checkpoint imported_checkpoint(const ImportedGpt& source, const SunkCost& sunk,
                               const std::string& source_name,
                               const std::vector<std::string>& overrides = {});

// The record of a checkpoint made by import (nullopt for one trained here). UserError naming
// the file and kImportKey when the record is malformed.
std::optional<ImportRecord> import_record(const std::map<std::string, std::string>& metadata,
                                          const std::filesystem::path& path);

// Checks one tensor read from a source file: its shape. UserError naming the file and the
// source's tensor name, with the expected and found shapes.
void expect_shape(const std::vector<int64_t>& found, const std::vector<int64_t>& expected,
                  const std::filesystem::path& file, const std::string& name);

}  // namespace upcycle
