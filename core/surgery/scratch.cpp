#include "core/surgery/scratch.h"

#include "core/errors.h"
#include "core/model/model.h"
#include "core/surgery/checkpoint_edit.h"

namespace upcycle {

Checkpoint scratch_checkpoint(const Checkpoint& dense, const MoeConfig& moe, uint64_t seed,
                              Backend& backend) {
    surgery::require_dense(dense, "the scratch baseline");
    if (moe.experts < 1) {
        throw UserError("", "model.moe.experts",
                        "the scratch baseline is an MoE model: expected at least one expert, found " +
                            std::to_string(moe.experts));
    }
    Checkpoint out;
    out.config = dense.config;
    out.config.model.moe = moe;
    validate(out.config, "");

    const auto model = make_model(backend, out.config.model, /*max_batch=*/1);
    model->init_weights(seed);
    const std::vector<float> flat = model->parameters().to_host();
    surgery::SurgeryTensors t;
    for (const auto& info : model->layout()) {
        const auto begin = flat.begin() + static_cast<std::ptrdiff_t>(info.offset);
        t.weights[info.name] =
            HostTensor{info.shape, std::vector<float>(begin, begin + static_cast<std::ptrdiff_t>(info.numel))};
    }

    out.state = TrainingState{};
    out.state.data_rng = dense.state.data_rng;
    out.has_optimizer = false;
    out.optimizer_step = 0;
    out.file = surgery::assemble_file(model->layout(), std::move(t), /*with_optimizer=*/false);
    const nlohmann::json record = {
        {"method", "scratch"},
        {"source", {{"step", dense.state.step}, {"parameters", surgery::weight_count(dense.file)}}},
        {"parameters", surgery::weight_count(out.file)},
        {"moe", to_json(out.config)["model"]["moe"]},
        {"moe_layers", moe_layer_indices(out.config.model)},
        {"seed", seed},
    };
    surgery::finish_metadata(out, dense, record);
    return out;
}

}  // namespace upcycle
