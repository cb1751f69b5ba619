#pragma once
// The Backend interface: every op the models need, forward and backward.
//
// Conventions (all backends):
//  - Pointers are device memory of this backend; floats are fp32, row-major.
//  - Forward ops overwrite their outputs.
//  - Backward ops ACCUMULATE (+=) into every gradient they produce, parameter and input
//    gradients alike, so residual branches and tied weights need no extra adds. The caller
//    zeroes gradient buffers before a backward pass. The one exception is the gradient
//    source, softmax_crossentropy, which overwrites dlogits.
//  - Results never depend on the number of threads (reductions use a fixed order), so a
//    resumed run is bit-identical to an uninterrupted one.
// Shape letters: B batch, T tokens, C channels, H heads, V vocabulary, N = B·T rows.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/errors.h"
#include "core/precision.h"

namespace upcycle {

enum class DeviceKind { CPU, CUDA };

// Rows grouped by expert, for the experts' GEMMs (views of a MoeRouting's layout).
struct ExpertGroups {
    int E = 0;
    int rows_per_expert = 0;          // P > 0: padded, expert e's block is [e·P, (e+1)·P)
    int rows = 0;                     // all rows, padding included
    const int32_t* offset = nullptr;  // [E+1] device: first row of each expert
    const int32_t* count = nullptr;   // [E] device: rows each expert owns
};

// A routing decision on the device (every pointer is backend memory; moe_route writes them).
//
// Slots: token n owns S slots (topk: S = K, its selected experts in rank order;
//   expert_choice: S = E, the experts that chose it in ascending order, then empty slots).
// Rows: the dispatched copies of the tokens, grouped by expert, in token order within one.
//   padded layout (rows_per_expert = P > 0, P ≥ capacity): expert e owns rows
//     [e·P, e·P + count[e]); the rest of its block is padding (row_token −1). Static shapes,
//     so a backend multiplies whole blocks and reads nothing back (the GPU's choice whenever
//     a capacity bounds the rows, see Backend::pads_expert_rows).
//   compact layout (rows_per_expert = 0): rows() = N·K, expert e owns rows
//     [offset[e], offset[e+1]), offset the exclusive prefix sum of count; the rows from
//     offset[E] on are padding (when capacity dropped some). No padding inside.
struct MoeRouting {
    // ---- the rule
    int N = 0;                          // tokens
    int E = 0;                          // experts
    int K = 1;                          // topk's k (1 for expert choice)
    bool expert_choice = false;         // false: topk (token choice)
    bool renormalize = false;           // weights divided by the sum over the selected slots
    bool probability_priority = false;  // topk: within a rank, claim by descending probability
    int capacity = 0;                   // kept assignments per expert, at most (1..N)
    int rows_per_expert = 0;            // P > 0: padded layout; 0: compact
    double aux_loss_coef = 0;           // for moe_route_backward
    double z_loss_coef = 0;
    int slots() const { return expert_choice ? E : K; }
    int rows() const { return rows_per_expert > 0 ? E * rows_per_expert : N * K; }
    ExpertGroups groups() const {
        return {E, rows_per_expert, rows(), expert_offset, expert_count};
    }

    // ---- device buffers
    float* probabilities = nullptr;    // [N,E] softmax of the logits
    float* logsumexp = nullptr;        // [N]
    int32_t* slot_expert = nullptr;    // [N,S] selected expert, −1 = empty slot
    int32_t* slot_row = nullptr;       // [N,S] row carrying the slot, −1 = dropped or empty
    float* slot_weight = nullptr;      // [N,S] combine weight, 0 where slot_row = −1
    int32_t* row_token = nullptr;      // [rows()] token of each row, −1 = padding
    int32_t* expert_count = nullptr;   // [E] kept rows per expert
    int32_t* expert_offset = nullptr;  // [E+1] first row of each expert (padded: e·P)
    double* load_fraction = nullptr;   // [E] f_e of the load-balancing loss: the fraction of
                                       //     selections (before capacity) that name e
    double* statistics = nullptr;      // [kRoutingSums + E], see RoutingSum
};

// The sums moe_route leaves in MoeRouting::statistics (doubles; the host turns them into
// RoutingStats when it logs them). After the fixed entries come E more: Σ_n p[n,e].
enum RoutingSum : int {
    kEntropySum = 0,      // Σ_n −Σ_e p log p
    kSquaredLseSum = 1,   // Σ_n logsumexp_n²
    kUnroutedTokens = 2,  // tokens with no kept slot
    kRoutingSums = 3,     // count of the fixed entries
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual DeviceKind kind() const = 0;
    // One line for logs and provenance, e.g. "cpu (OpenBLAS SkylakeX, 2 threads)".
    virtual std::string describe() const = 0;

    // ---- memory -------------------------------------------------------------------------
    virtual void* allocate(std::size_t bytes) = 0;  // 64-byte aligned at least
    virtual void deallocate(void* ptr) noexcept = 0;
    virtual void upload(void* dst, const void* host_src, std::size_t bytes) = 0;
    virtual void download(void* host_dst, const void* src, std::size_t bytes) = 0;
    virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
    virtual void zero(void* dst, std::size_t bytes) = 0;
    virtual void synchronize() = 0;

    // The device's dense peak in FLOP/s for GEMMs of this precision (the denominator of the
    // model FLOPs utilisation), or 0 where no vendor figure is known (the CPU: the bench
    // measures sgemm instead).
    virtual double peak_flops(Precision /*precision*/) const { return 0; }

    // How a capacity-limited MoE layer lays out its expert rows (MoeRouting): padded blocks
    // of static shape, so that nothing is read back (a GPU), or compact, computing no padding
    // rows (the CPU, which reads the expert counts for free).
    virtual bool pads_expert_rows() const { return false; }

    // ---- precision (a mode: the trainer sets it once for a run) -------------------------
    void set_precision(Precision precision) { precision_ = precision; }
    Precision precision() const { return precision_; }

    // ---- linear layer (PyTorch nn.Linear layout) ----------------------------------------
    // out[M,N] = inp[M,K] · weight[N,K]^T + bias[N]      (bias may be null)
    virtual void matmul_forward(float* out, const float* inp, const float* weight,
                                const float* bias, int M, int K, int N) = 0;
    // dinp[M,K] += dout[M,N] · weight[N,K];  dweight[N,K] += dout^T · inp;
    // dbias[N] += Σ_m dout[m,:].  dinp and dbias may be null (skipped).
    virtual void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int M, int K, int N) = 0;

    // ---- embeddings ---------------------------------------------------------------------
    // out[B,T,C] = wte[tokens[b,t],:] + wpe[t,:]
    virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                   const float* wpe, int B, int T, int C) = 0;
    // dwte[v,:] += Σ_{b,t: tokens=v} dout[b,t,:];  dwpe[t,:] += Σ_b dout[b,t,:]
    virtual void embedding_backward(float* dwte, float* dwpe, const float* dout,
                                    const int32_t* tokens, int B, int T, int C) = 0;

    // ---- layernorm (eps 1e-5, biased variance, as PyTorch) ------------------------------
    // out[N,C] = (inp - mean) · rstd · weight + bias; saves mean[N], rstd[N]
    virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                   const float* weight, const float* bias, int N, int C) = 0;
    virtual void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                    const float* inp, const float* weight, const float* mean,
                                    const float* rstd, int N, int C) = 0;

    // ---- multi-head self-attention core (softmax(q·kᵀ/√hs [+ causal mask]) · v) ---------
    // qkv[B,T,3C]: q, k, v stacked in that order; inside each, head h owns columns
    // [h·hs, (h+1)·hs), hs = C/H.  out[B,T,C] in the same head layout.
    // lse[B,H,T] saves each query row's log-sum-exp of the scaled scores, so the backward
    // recomputes the probabilities: memory is linear in T (no T×T cache).
    virtual void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C,
                                   int H, bool causal) = 0;
    // dqkv[B,T,3C] += gradient; needs the forward's out and lse.
    virtual void attention_backward(float* dqkv, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int B, int T, int C, int H,
                                    bool causal) = 0;

    // ---- pointwise ----------------------------------------------------------------------
    // tanh-approximated GELU, as PyTorch's gelu(approximate="tanh")
    virtual void gelu_forward(float* out, const float* inp, std::size_t n) = 0;
    virtual void gelu_backward(float* dinp, const float* inp, const float* dout, std::size_t n) = 0;
    // out = a + b (out may alias a or b)
    virtual void add(float* out, const float* a, const float* b, std::size_t n) = 0;
    // y += x
    virtual void accumulate(float* y, const float* x, std::size_t n) = 0;
    // x *= s
    virtual void scale(float* x, float s, std::size_t n) = 0;

    // ---- loss ---------------------------------------------------------------------------
    // Fused softmax + cross-entropy over logits[N,V]:
    //   losses[n] = logsumexp(logits[n,:]) - logits[n, targets[n]]
    //   dlogits[n,:] = (softmax(logits[n,:]) - onehot(targets[n])) · grad_scale   (OVERWRITES;
    //                  may alias logits; null = no gradient)
    //   argmax[n] = index of the largest logit, lowest index on ties (null = skip)
    // A negative target marks a row to ignore: loss 0, gradient 0.
    virtual void softmax_crossentropy(float* losses, float* dlogits, int32_t* argmax,
                                      const float* logits, const int32_t* targets, int N, int V,
                                      float grad_scale) = 0;

    // ---- Mixture-of-Experts: routing, dispatch, expert GEMMs, combine -------------------
    // The routing decision lives on the device in fixed shapes (MoeRouting above), so a
    // capacity-limited MoE layer runs a whole training step without reading anything back.
    //
    // Routes the tokens by r's rule from the router logits[N,E] and writes every buffer of r
    // (core/moe/router.h states the rule; its route() is the reference).
    virtual void moe_route(const MoeRouting& r, const float* logits) = 0;
    // dlogits[N,E] (OVERWRITES: the router logits have no other gradient) from the gradients
    // of the combine weights dslot_weight[N,S] (0 on dropped and empty slots) and the
    // auxiliary losses aux_loss_coef·aux + z_loss_coef·z, for the decision in r.
    virtual void moe_route_backward(float* dlogits, const float* dslot_weight,
                                    const MoeRouting& r) = 0;

    // Dispatch: out[row,:] = inp[row_token[row],:], zeros on padding rows (row_token = −1).
    virtual void gather_rows(float* out, const float* inp, const int32_t* row_token, int rows,
                             int C) = 0;
    // dinp[n,:] += Σ_{s < S, slot_row[n,s] ≥ 0, in slot order} dout[slot_row[n,s],:]
    virtual void gather_rows_backward(float* dinp, const float* dout, const int32_t* slot_row,
                                      int N, int S, int C) = 0;
    // Combine (OVERWRITES; a token with no kept slot gets zeros):
    //   out[n,:] = Σ_{s: slot_row[n,s] ≥ 0, in slot order} slot_weight[n,s] · src[slot_row[n,s],:]
    virtual void combine_rows(float* out, const float* src, const float* slot_weight,
                              const int32_t* slot_row, int N, int S, int C) = 0;
    // For each kept slot (n,s) with row = slot_row[n,s]:
    //   dsrc[row,:] += slot_weight[n,s] · dout[n,:];  dslot_weight[n,s] += dout[n,:] · src[row,:]
    // Every row is carried by at most one slot, so each dsrc row has one writer.
    virtual void combine_rows_backward(float* dsrc, float* dslot_weight, const float* dout,
                                       const float* src, const float* slot_weight,
                                       const int32_t* slot_row, int N, int S, int C) = 0;

    // The experts' linear layers: one weight per expert, at a fixed stride in the parameter
    // buffer (W_e = weight + e·weight_stride [N,K], b_e = bias + e·bias_stride [N]), applied
    // to the rows each expert owns in g:
    //   out[rows of e] = inp[rows of e] · W_e^T + b_e
    // Padding rows of out get finite values that nothing reads (a backend may multiply whole
    // padded blocks). The gradient buffers of expert_matmul_backward use the same strides.
    virtual void expert_matmul_forward(float* out, const float* inp, const float* weight,
                                       std::size_t weight_stride, const float* bias,
                                       std::size_t bias_stride, const ExpertGroups& g, int K,
                                       int N) = 0;
    // Over the rows each expert owns: dinp += dout · W_e;  dW_e += doutᵀ · inp;
    // db_e += Σ_rows dout (dinp and dbias may be null). Padding rows of dout must be zero and
    // their dinp rows receive zeros (a backend may multiply whole padded blocks).
    virtual void expert_matmul_backward(float* dinp, float* dweight, float* dbias,
                                        const float* dout, const float* inp, const float* weight,
                                        std::size_t weight_stride, std::size_t bias_stride,
                                        const ExpertGroups& g, int K, int N) = 0;

    // ---- vision -------------------------------------------------------------------------
    // Patch rows of grey images (a pure rearrangement, no backward): images[B,H,W] →
    // out[B·P, p·p], P = (H/p)·(W/p); patches in row-major order over the image, pixels
    // row-major within each patch. H and W are multiples of p.
    virtual void patch_embed_input(float* out, const float* images, int B, int H, int W, int p) = 0;
    // Token sequence with the class token first: out[B, 1+P, C] with
    //   out[b,0,:] = cls + wpe[0,:];  out[b,1+i,:] = patch_emb[b·P+i,:] + wpe[1+i,:]
    virtual void assemble_tokens(float* out, const float* patch_emb, const float* cls,
                                 const float* wpe, int B, int P, int C) = 0;
    // dpatch_emb[b·P+i,:] += dout[b,1+i,:];  dcls += Σ_b dout[b,0,:];
    // dwpe[t,:] += Σ_b dout[b,t,:]   (sums over b in order; any pointer may be null)
    virtual void assemble_tokens_backward(float* dpatch_emb, float* dcls, float* dwpe,
                                          const float* dout, int B, int P, int C) = 0;
    // out[b,:] = x[b,0,:] for x[B,T,C]
    virtual void gather_class_tokens(float* out, const float* x, int B, int T, int C) = 0;
    // dx[b,0,:] += dout[b,:]
    virtual void scatter_class_tokens(float* dx, const float* dout, int B, int T, int C) = 0;

    // ---- optimizer ----------------------------------------------------------------------
    // AdamW (decoupled weight decay, bias-corrected, step ≥ 1) on n parameters:
    //   g = grads · grad_scale;  m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
    //   params -= lr · ( m̂ / (√v̂ + eps) + weight_decay · params )
    virtual void adamw_update(float* params, const float* grads, float* m, float* v, std::size_t n,
                              float lr, float beta1, float beta2, float eps, float weight_decay,
                              float grad_scale, int64_t step) = 0;
    // Σ x² over n elements in double, in a fixed order (deterministic).
    virtual double sum_squares(const float* x, std::size_t n) = 0;

protected:
    Precision precision_ = Precision::FP32;
};

}  // namespace upcycle
