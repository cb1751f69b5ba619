#pragma once
// The text task (model.arch gpt): see core/task/task.h.
#include "core/task/task.h"

namespace upcycle {

// expert_parallel: as make_model's.
std::unique_ptr<TrainingTask> make_text_task(Backend& backend, const RunConfig& config,
                                             const std::string& config_source,
                                             Communicator* expert_parallel = nullptr);

}  // namespace upcycle
