#pragma once
// The resolved configuration of one training run, read from YAML (with --set overrides),
// written into checkpoints as JSON, and read back from them. Every struct lists its fields
// once, in visit_fields(), and the YAML reader, the JSON writer and the JSON reader all walk
// that one list, so a new key is added in exactly one place.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/choice.h"

namespace YAML {
class Node;
}

namespace upcycle {

// Mixture-of-Experts: which blocks' MLPs are MoE layers and how they route.
struct MoeConfig {
    int experts = 0;                     // E; 0 = a dense model
    std::string layers = "every_other";  // every_other (1, 3, 5, … zero-based) | all | "i,j,…"
    RouterKind router = RouterKind::TopK;  // topk (token choice) | expert_choice
    int k = 2;                             // experts per token (topk)
    double capacity_factor = 2.0;  // training; capacity = ceil(k·tokens·cf/E); ≤ 0: no limit
    double eval_capacity_factor = 2.0;       // evaluation
    Combine combine = Combine::SoftmaxTopK;  // softmax_topk (the paper's) | renormalized
    Priority priority =
        Priority::TokenOrder;     // which tokens overflow first: token_order | probability
    double aux_loss_coef = 0.01;  // Switch load balancing E·Σ f_e·P_e
    double z_loss_coef = 0.001;   // router z-loss mean(logsumexp(logits)²)
};

struct ModelConfig {
    Arch arch = Arch::Gpt;  // gpt (text, causal) | vit (images, encoder)
    int vocab_size = 256;   // V; byte-level text by default (gpt)
    int context = 128;    // T (gpt); a ViT's T is 1 + (image_size/patch)², see tokens_per_example
    int channels = 128;   // C
    int layers = 4;       // L
    int heads = 4;        // H
    MoeConfig moe;        // experts = 0: dense
    int patch = 4;        // p: ViT patch side in pixels (vit)
    int image_size = 28;  // ViT input side (square, grey), fixed by the data (vit)
    int classes = 10;     // ViT head outputs (vit)
};

// Tokens one example occupies: the context for a GPT, 1 (class token) + patches for a ViT.
int tokens_per_example(const ModelConfig& model);

// One line for people: "GPT L=4 C=128 H=4 T=128 V=256" or "ViT L=6 C=128 H=4 patch=4 T=50",
// with ", MoE E=8 topk k=2 on blocks 1,3" when it has experts.
std::string describe_model(const ModelConfig& model);

// The zero-based block indices whose MLP is an MoE layer (empty for a dense model).
// Throws UserError (file = source, key model.moe.layers) if the list is malformed.
std::vector<int> moe_layer_indices(const ModelConfig& model, const std::string& source = "");

struct DataConfig {
    // kjv | synthetic | text | tokens (gpt); fashion_mnist (vit)
    DataSource source = DataSource::Kjv;
    std::string path;  // the file, for source: text
    // source: tokens (core/data/token_shards.h): the llm.c shards or nanoGPT .bin files of
    // token ids to train on and to evaluate on, as glob patterns ("data/fineweb_train_*.bin")
    std::string train_glob;
    std::string val_glob;
    double validation_fraction = 0.05;  // for text and synthetic (tail of the file)
    int64_t synthetic_bytes = 1 << 20;  // for source: synthetic
    uint64_t synthetic_seed = 1;
    // images (fashion_mnist): a fixed, class-balanced validation split carved from train
    int validation_images = 5000;
    int64_t train_images = 0;                   // keep a class-balanced subset of train (0: all)
    Augmentation augment = Augmentation::None;  // none | crop_flip (random crop + horizontal flip)
    int crop_padding = 2;                       // pixels of padding for the random crop
};

struct TrainConfig {
    int batch_size = 16;
    int64_t steps = 1000;
    Schedule schedule = Schedule::Rsqrt;  // constant | rsqrt | cosine
    double lr = 1e-3;
    int64_t warmup_steps = 100;
    double min_lr_ratio = 0.1;  // cosine floor, as a fraction of lr
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;  // matrices only
    double grad_clip = 1.0;     // global norm; 0 disables
    // Examples per forward/backward pass; batch_size/micro_batch passes accumulate into one
    // optimizer step (gradient accumulation). 0: the whole batch in one pass. Must divide
    // batch_size. An MoE layer routes (and applies its capacity to) each micro-batch alone.
    int micro_batch = 0;
    // GEMM operand precision: fp32, or bf16 (operands rounded to bfloat16, fp32
    // accumulation and outputs; master weights, optimizer state and checkpoints stay fp32).
    Precision precision = Precision::FP32;
    // Expert parallelism: spread every MoE layer's experts over the ranks of the job, each
    // rank computing model.moe.experts / ranks of them for every rank's tokens (which must
    // divide evenly). Each rank still routes (and applies the capacity to) its own micro-batch
    // as one process would, and keeps the whole parameter buffer, so checkpoints are the same;
    // one process ignores it. Every forward, evaluation included, is then a collective of the
    // ranks. See core/moe/expert_parallel_dispatcher.h.
    bool expert_parallel = false;
    uint64_t seed = 1;  // weights init and data order
    int64_t log_every = 10;
    // ZeRO stage of a data-parallel job of several ranks: 0, every rank keeps the AdamW
    // moments of every parameter; 1, each rank keeps and updates one shard of them
    // (core/optim/data_parallel_adamw.h). The same training up to float reduction order, and
    // the same checkpoints. One process ignores it.
    int zero_stage = 0;
};

struct EvalConfig {
    int64_t every = 250;      // steps between evaluations (0: only at the end)
    int64_t max_windows = 0;  // evenly spaced validation windows per evaluation (0: all) (text)
    // images: validation images per evaluation (evenly spaced; 0: all). At budget milestones and
    // at the end a ViT is also measured on the test split: accuracy and the few-shot probe.
    int64_t max_images = 0;
    std::string probe_shots = "1,5,10";  // examples per class of the ridge probe ("": no probe)
    int probe_seeds = 3;                 // draws of the few-shot examples, averaged
    double probe_ridge = 1e-2;           // ridge λ (times the number of examples)
};

// The shot counts eval.probe_shots lists (empty for ""). UserError naming eval.probe_shots.
std::vector<int> probe_shot_counts(const EvalConfig& eval, const std::string& source = "");

struct CheckpointConfig {
    int64_t every = 500;         // steps between checkpoints (0: only at the end)
    double every_seconds = 300;  // also checkpoint after this much wall time (0: off)
};

struct RunConfig {
    std::string name = "run";
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    EvalConfig eval;
    CheckpointConfig checkpoint;
};

// Reads a YAML run config, applies "key.path=value" overrides, fills defaults, validates.
// Throws UserError naming the file, the key (and its line) and what was expected.
RunConfig load_run_config(const std::filesystem::path& file,
                          const std::vector<std::string>& overrides = {});
// Same, from YAML text (source names it in errors).
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});

// Same, from an already-parsed YAML mapping holding only run-config keys (e.g. the run part
// of a sweep file): errors keep the lines of the original file.
RunConfig run_config_from_yaml(const YAML::Node& root, const std::string& source);

nlohmann::json to_json(const RunConfig& config);
// to_json without the keys that do not apply to the config's model.arch (a GPT has no patch
// size, a ViT no vocabulary): a trial's identity, so adding a key for one architecture does
// not change the identity of the other's trials.
nlohmann::json to_identity_json(const RunConfig& config);
// Reads a config written by to_json (e.g. from a checkpoint); source names it in errors.
RunConfig run_config_from_json(const nlohmann::json& json, const std::string& source);

// Throws UserError (file = source) if the configuration is impossible.
void validate(const RunConfig& config, const std::string& source);

// Named model shapes for `bench` and configs (`model.preset`): gpt-tiny, gpt-small, gpt-124m,
// vit-tiny.
struct ModelPreset {
    std::string name;
    ModelConfig model;
    int batch_size;
};
const std::vector<ModelPreset>& model_presets();
const ModelPreset& find_model_preset(const std::string& name);  // UserError if unknown

// Throws the UserError for an unknown key: file = source, key = its full path, the line
// (`where`, e.g. " (line 3)"), and a "did you mean" for `leaf` among `known` where one fits
// (else the list of known keys).
[[noreturn]] void throw_unknown_key(const std::string& source, const std::string& key,
                                    const std::string& leaf, const std::vector<std::string>& known,
                                    const std::string& where);

}  // namespace upcycle
