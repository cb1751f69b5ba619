#pragma once
// The CPU backend: the readable reference every other backend is tested against, and fast
// enough to train small models on a laptop. GEMMs go to OpenBLAS (OpenMP build); everything
// else is OpenMP-parallel C++ that the compiler vectorises. One op per .cpp file in this
// folder; this class only routes the interface to them.
#include "core/backend.h"

namespace upcycle {

// Not final: tests derive from it to count what crosses to the host.
class CpuBackend : public Backend {
public:
    DeviceKind kind() const override { return DeviceKind::CPU; }
    std::string describe() const override;

    void* allocate(std::size_t bytes) override;
    void deallocate(void* ptr) noexcept override;
    void upload(void* dst, const void* host_src, std::size_t bytes) override;
    void download(void* host_dst, const void* src, std::size_t bytes) override;
    void copy(void* dst, const void* src, std::size_t bytes) override;
    void zero(void* dst, std::size_t bytes) override;
    void synchronize() override {}

    void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int M,
                        int K, int N) override;
    void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int M, int K, int N) override;
    void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                           int B, int T, int C) override;
    void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                            int B, int T, int C) override;
    void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                           const float* weight, const float* bias, int N, int C) override;
    void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, const float* mean,
                            const float* rstd, int N, int C) override;
    void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int H,
                           bool causal) override;
    void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                            const float* lse, int B, int T, int C, int H, bool causal) override;
    void gelu_forward(float* out, const float* inp, std::size_t n) override;
    void gelu_backward(float* dinp, const float* inp, const float* dout, std::size_t n) override;
    void add(float* out, const float* a, const float* b, std::size_t n) override;
    void accumulate(float* y, const float* x, std::size_t n) override;
    void scale(float* x, float s, std::size_t n) override;
    void softmax_crossentropy(float* losses, float* dlogits, int32_t* argmax, const float* logits,
                              const int32_t* targets, int N, int V, float grad_scale) override;
    void moe_route(const MoeRouting& r, const float* logits) override;
    void moe_route_backward(float* dlogits, const float* dslot_weight,
                            const MoeRouting& r) override;
    void gather_rows(float* out, const float* inp, const int32_t* row_token, int rows,
                     int C) override;
    void gather_rows_backward(float* dinp, const float* dout, const int32_t* slot_row, int N, int S,
                              int C) override;
    void combine_rows(float* out, const float* src, const float* slot_weight,
                      const int32_t* slot_row, int N, int S, int C) override;
    void combine_rows_backward(float* dsrc, float* dslot_weight, const float* dout,
                               const float* src, const float* slot_weight, const int32_t* slot_row,
                               int N, int S, int C) override;
    void expert_matmul_forward(float* out, const float* inp, const float* weight,
                               std::size_t weight_stride, const float* bias,
                               std::size_t bias_stride, const ExpertGroups& g, int K,
                               int N) override;
    void expert_matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                const float* inp, const float* weight, std::size_t weight_stride,
                                std::size_t bias_stride, const ExpertGroups& g, int K,
                                int N) override;
    void patch_embed_input(float* out, const float* images, int B, int H, int W, int p) override;
    void assemble_tokens(float* out, const float* patch_emb, const float* cls, const float* wpe,
                         int B, int P, int C) override;
    void assemble_tokens_backward(float* dpatch_emb, float* dcls, float* dwpe, const float* dout,
                                  int B, int P, int C) override;
    void gather_class_tokens(float* out, const float* x, int B, int T, int C) override;
    void scatter_class_tokens(float* dx, const float* dout, int B, int T, int C) override;
    void adamw_update(float* params, const float* grads, float* m, float* v, std::size_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int64_t step) override;
    double sum_squares(const float* x, std::size_t n) override;
};

}  // namespace upcycle
