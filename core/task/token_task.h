#pragma once
// The token task (model.arch gpt, data.source tokens): see core/task/task.h.
#include "core/task/task.h"

namespace upcycle {

std::unique_ptr<TrainingTask> make_token_task(Backend& backend, const RunConfig& config,
                                              const std::string& config_source);

}  // namespace upcycle
