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

namespace upcycle {

enum class DeviceKind { CPU, CUDA };

// The precision of the products (a mode of the backend, set once per run):
//   FP32: fp32 operands and products.
//   BF16: the linear layers' GEMMs (matmul_forward, matmul_backward) round both operands to
//         bfloat16 (round to nearest even) and accumulate and write fp32 — what tensor
//         cores do with bf16 inputs. A backend may also run attention's products on bf16
//         operands (the CUDA backend does, for head sizes that are multiples of 16; softmax
//         statistics stay fp32). Every other op, the stored activations, the master weights
//         and the optimizer stay fp32. The CPU backend emulates the GEMMs' rounding (the
//         specification) and keeps attention fp32.
enum class Precision { FP32, BF16 };

// "fp32" / "bf16" (the spelling of train.precision and --precision).
inline const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }
// The precision a name spells; anything else is a UserError naming source and key.
inline Precision parse_precision(const std::string& name, const std::string& source,
                                 const std::string& key) {
    if (name == "fp32") return Precision::FP32;
    if (name == "bf16") return Precision::BF16;
    throw UserError(source, key, "expected fp32 or bf16, found '" + name + "'");
}

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
                                 const float* inp, const float* weight, int M, int K,
                                 int N) = 0;

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
    virtual void layernorm_backward(float* dinp, float* dweight, float* dbias,
                                    const float* dout, const float* inp, const float* weight,
                                    const float* mean, const float* rstd, int N, int C) = 0;

    // ---- multi-head self-attention core (softmax(q·kᵀ/√hs [+ causal mask]) · v) ---------
    // qkv[B,T,3C]: q, k, v stacked in that order; inside each, head h owns columns
    // [h·hs, (h+1)·hs), hs = C/H.  out[B,T,C] in the same head layout.
    // lse[B,H,T] saves each query row's log-sum-exp of the scaled scores, so the backward
    // recomputes the probabilities: memory is linear in T (no T×T cache).
    virtual void attention_forward(float* out, float* lse, const float* qkv, int B, int T,
                                   int C, int H, bool causal) = 0;
    // dqkv[B,T,3C] += gradient; needs the forward's out and lse.
    virtual void attention_backward(float* dqkv, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int B, int T, int C,
                                    int H, bool causal) = 0;

    // ---- pointwise ----------------------------------------------------------------------
    // tanh-approximated GELU, as PyTorch's gelu(approximate="tanh")
    virtual void gelu_forward(float* out, const float* inp, std::size_t n) = 0;
    virtual void gelu_backward(float* dinp, const float* inp, const float* dout,
                               std::size_t n) = 0;
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
                                      const float* logits, const int32_t* targets, int N,
                                      int V, float grad_scale) = 0;

    // ---- Mixture-of-Experts dispatch and combine ----------------------------------------
    // Rows are (token, expert) assignments grouped by expert. The token-major index
    // (token_offsets[N+1], token_rows[R]) lists, for token n, the rows
    // token_rows[token_offsets[n] .. token_offsets[n+1]) that carry it, in a fixed order;
    // a token may have none (all its assignments dropped). Walking tokens, not rows, keeps
    // every reduction in a fixed order without atomics.
    //
    // out[r,:] = inp[row_token[r],:]   for r < R   (dispatch: gather tokens into expert rows)
    virtual void gather_rows(float* out, const float* inp, const int32_t* row_token, int R,
                             int C) = 0;
    // dinp[n,:] += Σ_{r ∈ rows of n} dout[r,:]
    virtual void gather_rows_backward(float* dinp, const float* dout,
                                      const int32_t* token_offsets, const int32_t* token_rows,
                                      int N, int C) = 0;
    // out[n,:] = Σ_{j ∈ [token_offsets[n], token_offsets[n+1])} weights[j] · src[token_rows[j],:]
    // (OVERWRITES; a token with no rows gets zeros). weights are in token-major order.
    virtual void combine_rows(float* out, const float* src, const float* weights,
                              const int32_t* token_offsets, const int32_t* token_rows, int N,
                              int C) = 0;
    // dsrc[token_rows[j],:] += weights[j] · dout[n,:];  dweights[j] += dout[n,:] · src[token_rows[j],:]
    virtual void combine_rows_backward(float* dsrc, float* dweights, const float* dout,
                                       const float* src, const float* weights,
                                       const int32_t* token_offsets, const int32_t* token_rows,
                                       int N, int C) = 0;

    // ---- vision -------------------------------------------------------------------------
    // Patch rows of grey images (a pure rearrangement, no backward): images[B,H,W] →
    // out[B·P, p·p], P = (H/p)·(W/p); patches in row-major order over the image, pixels
    // row-major within each patch. H and W are multiples of p.
    virtual void patch_embed_input(float* out, const float* images, int B, int H, int W,
                                   int p) = 0;
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
    virtual void adamw_update(float* params, const float* grads, float* m, float* v,
                              std::size_t n, float lr, float beta1, float beta2, float eps,
                              float weight_decay, float grad_scale, int64_t step) = 0;
    // Σ x² over n elements in double, in a fixed order (deterministic).
    virtual double sum_squares(const float* x, std::size_t n) = 0;

protected:
    Precision precision_ = Precision::FP32;
};

}  // namespace upcycle
