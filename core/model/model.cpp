#include "core/model/model.h"

#include "core/model/gpt.h"
#include "core/model/vit.h"

namespace upcycle {

ForwardStats classification_loss(Backend& backend, float* logits, float* losses, int32_t* argmax,
                                 const int32_t* targets_device, std::span<const int32_t> targets,
                                 int K, Pass pass) {
    const int N = static_cast<int>(targets.size());
    int64_t predicted = 0;
    for (int32_t target : targets) predicted += target >= 0;
    const bool train = pass == Pass::Train;
    const float grad_scale = predicted > 0 ? 1.0f / static_cast<float>(predicted) : 0.0f;
    backend.softmax_crossentropy(losses, train ? logits : nullptr, train ? nullptr : argmax, logits,
                                 targets_device, N, K, grad_scale);

    ForwardStats stats;
    std::vector<float> host_losses(static_cast<std::size_t>(N));
    backend.download(host_losses.data(), losses, sizeof(float) * host_losses.size());
    for (float x : host_losses) stats.loss_sum += x;
    stats.tokens = predicted;
    if (!train) {
        std::vector<int32_t> host_argmax(static_cast<std::size_t>(N));
        backend.download(host_argmax.data(), argmax, sizeof(int32_t) * host_argmax.size());
        for (int i = 0; i < N; ++i)
            stats.correct += targets[i] >= 0 && host_argmax[i] == targets[i];
    }
    return stats;
}

std::vector<ParamInfo> parameter_layout(const ModelConfig& model) {
    if (model.arch == Arch::Vit) return vit_parameter_layout(model);
    return gpt_parameter_layout(model);
}

std::unique_ptr<Model> make_model(Backend& backend, const ModelConfig& model, int max_batch,
                                  Communicator* expert_parallel) {
    if (model.arch == Arch::Vit) {
        return std::make_unique<Vit>(backend, model, max_batch, expert_parallel);
    }
    return std::make_unique<Gpt>(backend, model, max_batch, expert_parallel);
}

}  // namespace upcycle
