#pragma once
// ViT: an image is cut into p×p patches, each flattened (row-major) and linearly embedded
// (patch.weight [C, p·p]); a learned class token (cls [C]) is prepended and learned positions
// (wpe.weight [1+P, C]) added; then the GPT's pre-LayerNorm blocks WITHOUT the causal mask
// (MoE blocks through the same MoeLayer when model.moe.experts > 0; expert_choice routing is
// fine here because no token may not see another), a final LayerNorm and a linear head
// (head.weight [classes, C]) on the class token. Training objective: mean cross-entropy over
// the examples + the MoE auxiliary losses.
//
// Takes the model fields it needs from ModelConfig (channels, layers, heads, moe, patch,
// image_size, classes; vocab_size and context are ignored). Parameters live in one flat buffer in vit_parameter_layout() order, with the checkpoint's
// names and PyTorch nn.Linear shapes.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model/transformer_model.h"
#include "core/tensor.h"

namespace upcycle {

struct VitShape {
    int patch;  // p
    int image;  // image side (square, grey)
    int classes;
    explicit VitShape(const ModelConfig& model)
        : patch(model.patch), image(model.image_size), classes(model.classes) {}
    int patches() const { return (image / patch) * (image / patch); }  // P
    int tokens() const { return 1 + patches(); }                       // T = 1 + P
};

// Names, shapes and offsets of every parameter, in buffer order:
// patch.{weight,bias}, cls, wpe.weight, blocks.{i}.* (as the GPT's), lnf.*, head.*.
std::vector<ParamInfo> vit_parameter_layout(const ModelConfig& model);

class Vit final : public TransformerModel {
public:
    // Allocates parameters, gradients and activations for batches of up to max_batch images.
    // expert_parallel: the ranks the MoE layers' experts are spread over (null: all here).
    Vit(Backend& backend, const ModelConfig& model, int max_batch,
        Communicator* expert_parallel = nullptr);

    const VitShape& shape() const { return shape_; }

    // Normal(0, 0.02) for every matrix (patch.weight, wpe.weight, the blocks' and
    // head.weight — not zero-initialised) and for cls; the residual output projections
    // (attn.proj, mlp.proj, experts' proj) scaled by 1/sqrt(2·layers); zero biases;
    // LayerNorm weight 1. Deterministic.
    void init_weights(uint64_t seed) override;

    // images: host [B, image, image] floats (already normalised); labels: host [B] in
    // [0, classes), a negative label is not predicted. B ≤ max_batch. ForwardStats.tokens
    // counts the predicted examples; correct is filled on Evaluate passes.
    ForwardStats forward(std::span<const float> images, std::span<const int32_t> labels, int B,
                         Pass pass);
    // Zeroes and fills gradients() with d(mean loss + aux losses)/d(parameters) of the last
    // Train forward.
    void backward(Gradients mode = Gradients::Overwrite) override;

    // Logits of the last forward, [B, classes], on the host (for tests and tools). After a
    // Train forward they are not available (the buffer holds dlogits).
    std::vector<float> logits_host() const;
    // The class token's residual stream after the last block, [B, C] (before lnf).
    std::vector<float> class_tokens_host() const;
    // The head's input of the last forward: the class tokens after the final LayerNorm,
    // [B, C] — the frozen features of the few-shot linear probe.
    std::vector<float> features_host() const;

private:
    VitShape shape_;

    int batch_ = 0;
    bool have_train_forward_ = false;
    bool logits_valid_ = false;
    Tensor images_, labels_;         // [B,H,W] f32, [B] int32
    Tensor patches_;                 // [B·P, p·p]
    Tensor patch_emb_;               // [B·P, C]
    Tensor cls_out_;                 // [B,C] class tokens of the final stream
    Tensor lnf, lnf_mean, lnf_rstd;  // [B,C], [B], [B]
    Tensor logits_;                  // [B,classes]; holds dlogits after a Train forward
    Tensor losses_;                  // [B]
    Tensor argmax_;                  // [B] int32
    // backward scratch
    Tensor dcls_out_, dlnf_;  // [B,C]
    Tensor dresidual_;        // [N,C]
    Tensor dpatch_emb_;       // [B·P, C]
};

}  // namespace upcycle
