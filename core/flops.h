#pragma once
// The one place that counts FLOPs. Budgets, MFU, benchmarks and plots all call this.
//
// Convention (as PaLM and nanoGPT/llm.c MFU): a multiply-add is 2 FLOPs; only matmuls count.
//   forward per token  = 2 · (matmul weights) + attention
//     matmul weights   = L · 12·C²  (qkv 3C², proj C², fc 4C², fc-proj 4C²) + V·C (tied head)
//                        (ViT: + (P·p²·C patch embedding + classes·C head) / T, both once per
//                        image; T = 1 + P tokens per image, see tokens_per_example)
//     attention        = L · 4·T·C  (q·kᵀ and p·v over the full context; no causal discount)
//   training per token = 3 × forward (backward = 2 × forward)
// Embedding lookups, layernorms, biases and pointwise ops are not counted.
// MoE blocks count the ACTIVE expert FLOPs: the MLP's 8C² per routed (token, expert) pair —
// k pairs per token for topk, capacity_factor (E when unlimited) for expert_choice, the
// nominal count whether or not some pairs overflow capacity — plus the router's E·C.
#include <string>

#include "core/config.h"

namespace upcycle {

struct FlopsPerToken {
    double forward = 0;
    double training = 0;
};

FlopsPerToken flops_per_token(const ModelConfig& model);

// Expert MLP applications per token in an MoE block (k for topk; cf, or E when unlimited,
// for expert_choice).
double active_experts_per_token(const MoeConfig& moe);

// "17.5 TFLOP", "4.56 GFLOP": FLOPs for people (3 significant digits, SI prefix).
std::string format_flops(double flops);

// Number of parameters (all tensors, embeddings included).
int64_t parameter_count(const ModelConfig& model);
// The same count in double: never overflows, for checking a config (e.g. one read from a file)
// before anything is built from it.
double parameter_count_as_double(const ModelConfig& model);

}  // namespace upcycle
