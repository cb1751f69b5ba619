#include "core/task/task.h"

#include "core/task/image_task.h"
#include "core/task/text_task.h"
#include "core/task/token_task.h"

namespace upcycle {

int micro_batch_size(const TrainConfig& train) {
    return train.micro_batch > 0 ? train.micro_batch : train.batch_size;
}

int micro_batches(const TrainConfig& train) { return train.batch_size / micro_batch_size(train); }

std::unique_ptr<TrainingTask> make_training_task(Backend& backend, const RunConfig& config,
                                                 const std::string& config_source) {
    if (config.model.arch == Arch::Vit) return make_image_task(backend, config, config_source);
    if (config.data.source == DataSource::Tokens)
        return make_token_task(backend, config, config_source);
    return make_text_task(backend, config, config_source);
}

}  // namespace upcycle
