#include "core/model/model.h"

#include "core/model/gpt.h"
#include "core/model/vit.h"

namespace upcycle {

std::vector<ParamInfo> parameter_layout(const ModelConfig& model) {
    if (model.arch == "vit") return vit_parameter_layout(model);
    return gpt_parameter_layout(model);
}

std::unique_ptr<Model> make_model(Backend& backend, const ModelConfig& model, int max_batch) {
    if (model.arch == "vit") return std::make_unique<Vit>(backend, model, max_batch);
    return std::make_unique<Gpt>(backend, model, max_batch);
}

}  // namespace upcycle
