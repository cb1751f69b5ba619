#include "core/flops.h"

namespace upcycle {

FlopsPerToken flops_per_token(const ModelConfig& m) {
    const double C = m.channels, L = m.layers, T = m.context, V = m.vocab_size;
    const double matmul_weights = L * 12.0 * C * C + V * C;
    const double attention = L * 4.0 * T * C;
    FlopsPerToken f;
    f.forward = 2.0 * matmul_weights + attention;
    f.training = 3.0 * f.forward;
    return f;
}

int64_t parameter_count(const ModelConfig& m) {
    const int64_t C = m.channels, L = m.layers, T = m.context, V = m.vocab_size;
    const int64_t per_block = 2 * C                 // ln1
                              + 3 * C * C + 3 * C   // qkv
                              + C * C + C           // attn proj
                              + 2 * C               // ln2
                              + 4 * C * C + 4 * C   // fc
                              + 4 * C * C + C;      // mlp proj
    return V * C + T * C + L * per_block + 2 * C;
}

}  // namespace upcycle
