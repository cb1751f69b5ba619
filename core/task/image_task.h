#pragma once
// The image task (model.arch vit): see core/task/task.h.
#include "core/task/task.h"

namespace upcycle {

// expert_parallel: as make_model's.
std::unique_ptr<TrainingTask> make_image_task(Backend& backend, const RunConfig& config,
                                              const std::string& config_source,
                                              Communicator* expert_parallel = nullptr);

}  // namespace upcycle
