#pragma once
// Model checkpoints: one safetensors file (core/safetensors.h) holding
//   - the weights under the design's names (PyTorch nn.Linear layout), loadable by a PyTorch
//     module with the same attribute names once the "optimizer." entries are filtered out;
//   - the AdamW moments beside them as "optimizer.exp_avg.<name>" / "optimizer.exp_avg_sq.<name>";
//   - in __metadata__: "upcycle.config" (the resolved RunConfig as JSON), "upcycle.step",
//     "upcycle.rng.data" (the data stream's generator state), "upcycle.tokens",
//     "upcycle.flops", "upcycle.seconds" (training consumed so far), "upcycle.optimizer_step"
//     (AdamW's own update count for bias correction, which restarts when its state is reset
//     while the schedule's step counter goes on), and
//     "upcycle.provenance" (JSON: git revision, build, compiler, host, time, backend).
// Written atomically; loading checks names, shapes and dtypes against the stored config.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "core/config.h"
#include "core/model/model.h"
#include "core/optim/adamw.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace upcycle {

inline constexpr const char* kOptimizerExpAvgPrefix = "optimizer.exp_avg.";
inline constexpr const char* kOptimizerExpAvgSqPrefix = "optimizer.exp_avg_sq.";

// Training progress that a checkpoint carries so a resumed run continues exactly.
struct TrainingState {
    int64_t step = 0;       // optimizer steps taken
    Rng::State data_rng{};  // state of the training-batch sampler
    int64_t tokens = 0;     // training tokens consumed
    double flops = 0;       // training FLOPs spent (core/flops.h)
    double seconds = 0;     // wall seconds of training
};

// Provenance of this process: git revision, build type, compiler, host, UTC time, backend.
std::map<std::string, std::string> make_provenance(const Backend& backend);

// optimizer: null, or one that holds the moments of every parameter.
void save_checkpoint(const std::filesystem::path& path, const RunConfig& config, Model& model,
                     AdamW* optimizer, const TrainingState& state);

struct Checkpoint {
    std::filesystem::path path;
    RunConfig config;
    TrainingState state;
    bool has_optimizer = false;
    int64_t optimizer_step = 0;  // AdamW updates behind the stored moments
    std::map<std::string, std::string> metadata;
    SafetensorsFile file;
};

// Reads and validates: metadata present and parseable, every tensor of the config's model
// present with the right shape and dtype, nothing unexpected. Throws UserError.
Checkpoint read_checkpoint(const std::filesystem::path& path);
// The same checks on a safetensors file already read (e.g. by parse_safetensors), as if read
// from path: what read_checkpoint does after reading the file.
Checkpoint checkpoint_from_safetensors(SafetensorsFile file, const std::filesystem::path& path);

// Only the training state, from the header (no tensor data is read).
TrainingState read_training_state(const std::filesystem::path& path);
// Only the run config (validated), from the header (no tensor data is read).
RunConfig read_checkpoint_config(const std::filesystem::path& path);

// Writes a checkpoint held in memory (e.g. made by surgery): its config, state, metadata
// (provenance replaced by this process's, the source's kept as "upcycle.parent_provenance"
// when the metadata has none yet) and every tensor in file order. Atomic.
void write_checkpoint(const std::filesystem::path& path, const Checkpoint& checkpoint,
                      const Backend& backend);

// The tensors a checkpoint of this model config holds (optimizer moments included or not).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_checkpoint_tensors(
    const ModelConfig& model, bool with_optimizer);

// Copies the weights (and, if optimizer is given and the file has them, the moments of its
// shard and the step counter) into a model built from checkpoint.config.model.
void load_into(const Checkpoint& checkpoint, Model& model, AdamW* optimizer);

}  // namespace upcycle
