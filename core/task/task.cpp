#include "core/task/task.h"

#include "core/task/image_task.h"
#include "core/task/text_task.h"

namespace upcycle {

std::unique_ptr<TrainingTask> make_training_task(Backend& backend, const RunConfig& config,
                                                 const std::string& config_source) {
    if (config.model.arch == "vit") return make_image_task(backend, config, config_source);
    return make_text_task(backend, config, config_source);
}

}  // namespace upcycle
