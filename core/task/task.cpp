#include "core/task/task.h"

#include "core/moe/expert_parallel_dispatcher.h"
#include "core/task/image_task.h"
#include "core/task/text_task.h"
#include "core/task/token_task.h"

namespace upcycle {

int micro_batch_size(const TrainConfig& train) {
    return train.micro_batch > 0 ? train.micro_batch : train.batch_size;
}

int micro_batches(const TrainConfig& train) { return train.batch_size / micro_batch_size(train); }

std::unique_ptr<TrainingTask> make_training_task(Backend& backend, const RunConfig& config,
                                                 const std::string& config_source,
                                                 Communicator& communicator) {
    Communicator* expert_parallel = nullptr;
    if (config.train.expert_parallel && config.model.moe.experts > 0 && communicator.size() > 1) {
        check_expert_parallel_split(config.model.moe.experts, communicator.size(), config_source);
        expert_parallel = &communicator;
    }
    if (config.model.arch == Arch::Vit) {
        return make_image_task(backend, config, config_source, expert_parallel);
    }
    if (config.data.source == DataSource::Tokens) {
        return make_token_task(backend, config, config_source, expert_parallel);
    }
    return make_text_task(backend, config, config_source, expert_parallel);
}

}  // namespace upcycle
