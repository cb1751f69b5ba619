#pragma once
// The image task (model.arch vit): see core/task/task.h.
#include "core/task/task.h"

namespace upcycle {

std::unique_ptr<TrainingTask> make_image_task(Backend& backend, const RunConfig& config,
                                              const std::string& config_source);

}  // namespace upcycle
