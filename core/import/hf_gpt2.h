#pragma once
// Hugging Face GPT-2 (transformers' GPT2LMHeadModel), both ways: a model folder as
// `save_pretrained` writes it — config.json and model.safetensors — read into our layout
// (import), and a dense GPT checkpoint written back as one (export).
//
// Their names → ours ("transformer." prefix present in GPT2LMHeadModel files, absent in the
// original gpt2 files; both read), C channels, V vocabulary, T positions:
//   wte.weight [V,C]                 → wte.weight            wpe.weight [T,C] → wpe.weight
//   h.{i}.ln_1.{weight,bias} [C]     → blocks.{i}.ln1.*      h.{i}.ln_2.*     → blocks.{i}.ln2.*
//   h.{i}.attn.c_attn.weight [C,3C]  → blocks.{i}.attn.qkv.weight [3C,C]  (transposed)
//   h.{i}.attn.c_proj.weight [C,C]   → blocks.{i}.attn.proj.weight [C,C]  (transposed)
//   h.{i}.mlp.c_fc.weight [C,4C]     → blocks.{i}.mlp.fc.weight [4C,C]    (transposed)
//   h.{i}.mlp.c_proj.weight [4C,C]   → blocks.{i}.mlp.proj.weight [C,4C]  (transposed)
//   (biases unchanged)               ln_f.{weight,bias} [C] → lnf.*
// Their Conv1D computes x·W + b with W [in, out]; our nn.Linear layout is [out, in], hence the
// transposes. q, k, v are stacked in c_attn's output in that order, as ours are. The head is
// tied to wte: lm_head.weight may be absent or must equal wte.weight. The causal-mask buffers
// h.{i}.attn.bias / attn.masked_bias some files carry are not parameters and are skipped.
// Tensors may be F32, F16 or BF16 (converted to fp32 exactly).
//
// config.json must describe what our GPT computes: model_type gpt2, activation gelu_new (the
// tanh GELU), layer_norm_epsilon 1e-5, n_inner 4·n_embd (or null), scaled attention
// (scale_attn_weights true, scale_attn_by_inverse_layer_idx false), no cross-attention, tied
// embeddings. The vocabulary is kept exactly (50,257 for GPT-2: no padding), so the loss is
// over the source's vocabulary and export gives back as many rows.
#include <filesystem>

#include "core/checkpoint.h"
#include "core/import/imported_gpt.h"

namespace upcycle {

// Reads DIR/config.json and DIR/model.safetensors. UserError naming the file and the key or
// tensor (missing, unexpected, wrong shape or dtype, a config we do not compute).
ImportedGpt read_hf_gpt2(const std::filesystem::path& dir);

// Writes a dense GPT checkpoint as DIR/config.json and DIR/model.safetensors (names with the
// "transformer." prefix, Conv1D layout, no lm_head.weight: tied), creating DIR. UserError
// naming the checkpoint for an MoE or ViT checkpoint, which have no GPT2LMHeadModel form.
void write_hf_gpt2(const std::filesystem::path& dir, const Checkpoint& checkpoint);

}  // namespace upcycle
