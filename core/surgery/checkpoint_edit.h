#pragma once
// What the surgeries (upcycle, warmstart, scratch) share: looking tensors up in the source
// checkpoint with errors that name them, assembling the result's tensors in the order
// save_checkpoint writes them, and keeping the result's metadata in step with its config and
// training state. Internal to core/surgery.
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/model/model.h"

namespace upcycle::surgery {

// Throws UserError (file = the checkpoint, key model.moe.experts) unless it is a dense model.
void require_dense(const Checkpoint& source, const std::string& method);

// Throws UserError(key) unless value is one of allowed.
void require_one_of(const std::string& value, const std::vector<std::string>& allowed,
                    const std::string& key);

// The source's tensor `name`, which must have `shape` (UserError naming the file and tensor).
const HostTensor& source_tensor(const Checkpoint& source, const std::string& name,
                                const std::vector<int64_t>& shape);

// The result's tensors by name: weights and, when the result keeps optimizer state, both
// AdamW moments of every weight.
struct SurgeryTensors {
    std::map<std::string, HostTensor> weights;
    std::map<std::string, HostTensor> exp_avg;
    std::map<std::string, HostTensor> exp_avg_sq;
};

// Moves the tensors into a file in layout order: every weight, then (with_optimizer) each
// weight's exp_avg and exp_avg_sq in turn, exactly as save_checkpoint lays them out.
// Asserts that every layout entry is present with its shape.
SafetensorsFile assemble_file(const std::vector<ParamInfo>& layout, SurgeryTensors tensors,
                              bool with_optimizer);

// Fills result.metadata from the source's (provenance and all), records the surgery as JSON
// under "upcycle.surgery", and refreshes the keys that mirror result.config and result.state
// (write_checkpoint rewrites them too; this keeps the in-memory checkpoint consistent).
// Also copies the metadata into result.file.metadata.
void finish_metadata(Checkpoint& result, const Checkpoint& source, const nlohmann::json& surgery);

// Population mean and standard deviation of a tensor, accumulated in double.
struct Moments {
    double mean = 0;
    double std = 0;
};
Moments tensor_moments(const std::vector<float>& values);

// Σ numel of the weight tensors (optimizer moments not counted).
int64_t weight_count(const SafetensorsFile& file);

}  // namespace upcycle::surgery
