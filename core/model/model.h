#pragma once
// What the trainer, the optimizer, checkpoints and surgery need of any model, GPT or ViT:
// one flat parameter buffer (and its gradient) in a named layout, initialisation, the
// backward pass of the last Train forward, and the MoE routing statistics. The forward pass
// differs by input (token ids or images) and is each model's own.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/comm.h"
#include "core/config.h"
#include "core/model/blocks.h"
#include "core/moe/router.h"
#include "core/tensor.h"

namespace upcycle {

// Loss statistics of one forward pass.
struct ForwardStats {
    double loss_sum = 0;  // Σ of per-prediction cross-entropy (nats)
    int64_t tokens = 0;   // predictions counted (targets ≥ 0): tokens of a GPT, images of a ViT
    int64_t correct = 0;  // argmax == target (only on Evaluate passes)
    // Σ over MoE layers of the coefficient-weighted aux + z losses (0 while the model does not
    // report it: Model::report_auxiliary_loss)
    double aux_loss = 0;
    double mean_loss() const { return tokens ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

// What backward() does with the gradients already in gradients().
enum class Gradients {
    Overwrite,   // zero them first: the gradient of this forward alone
    Accumulate,  // add to them (gradient accumulation over micro-batches)
};

class Model {
public:
    virtual ~Model() = default;

    virtual const ModelConfig& config() const = 0;
    virtual Backend& backend() const = 0;
    virtual int max_batch() const = 0;
    // Names, shapes and offsets of every parameter, in buffer order (the checkpoint's names).
    virtual const std::vector<ParamInfo>& layout() const = 0;
    virtual std::size_t num_parameters() const = 0;
    virtual Tensor& parameters() = 0;
    virtual Tensor& gradients() = 0;

    // Deterministic initialisation from a seed (see each model for the scales).
    virtual void init_weights(uint64_t seed) = 0;
    // d(mean loss + aux losses)/d(parameters) of the last Train forward, written into
    // gradients() (Overwrite) or added to them (Accumulate).
    virtual void backward(Gradients mode = Gradients::Overwrite) = 0;

    // Blocks whose MLP is an MoE layer, and their routing statistics from the last forward
    // (same order).
    virtual const std::vector<int>& moe_layers() const = 0;
    virtual std::vector<RoutingStats> routing_stats() const = 0;

    // Whether forward() fills ForwardStats::aux_loss (on by default). Its value is only
    // reported (the aux losses' gradients stay on the device), but reading it downloads every
    // MoE layer's routing sums, a wait for the device: training turns it on for the steps
    // it logs only.
    virtual void report_auxiliary_loss(bool on) = 0;
};

// The loss head every model ends with: fused softmax cross-entropy of logits[N,K] against
// targets (on the device in targets_device, and on the host; a negative target is ignored),
// as the mean over the predicted targets. Train: the gradient of that mean overwrites the
// logits in place (they are not needed any more). Evaluate: the argmax counts the correct
// predictions. losses[N] and argmax[N] are the model's buffers; aux_loss is left to the
// caller.
ForwardStats classification_loss(Backend& backend, float* logits, float* losses, int32_t* argmax,
                                 const int32_t* targets_device, std::span<const int32_t> targets,
                                 int K, Pass pass);

// The parameter layout of a model config, whichever its arch.
std::vector<ParamInfo> parameter_layout(const ModelConfig& model);

// A model of this config (model.arch picks GPT or ViT) for batches of up to max_batch
// examples; weights uninitialised. expert_parallel: the ranks its MoE layers' experts are
// spread over (core/moe/expert_parallel_dispatcher.h: each rank computes its share of the
// experts, every forward is a collective of the ranks, and the parameter buffer and its layout
// stay those of one process); null: every expert in this process.
std::unique_ptr<Model> make_model(Backend& backend, const ModelConfig& model, int max_batch,
                                  Communicator* expert_parallel = nullptr);

}  // namespace upcycle
