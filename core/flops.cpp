#include "core/flops.h"

#include <algorithm>

#include <fmt/format.h>

namespace upcycle {

double active_experts_per_token(const MoeConfig& moe) {
    if (moe.experts <= 0) return 1.0;
    if (moe.router == RouterKind::TopK) return moe.k;
    return moe.capacity_factor > 0 ? std::min<double>(moe.capacity_factor, moe.experts)
                                   : moe.experts;
}

FlopsPerToken flops_per_token(const ModelConfig& m) {
    const double C = m.channels, L = m.layers, T = tokens_per_example(m), V = m.vocab_size;
    const double moe_blocks = static_cast<double>(moe_layer_indices(m).size());
    const double dense_blocks = L - moe_blocks;
    const double E = m.moe.experts;
    const double moe_block_weights =
        4.0 * C * C + active_experts_per_token(m.moe) * 8.0 * C * C + E * C;
    const double block_weights = dense_blocks * 12.0 * C * C + moe_blocks * moe_block_weights;
    // GPT: the tied head, V·C per token. ViT: the patch embedding (P·p²·C) and the head on the
    // class token (classes·C) happen once per image, spread over its T tokens.
    double edge_weights = V * C;
    if (m.arch == Arch::Vit) {
        const double P = T - 1, patch_pixels = static_cast<double>(m.patch) * m.patch;
        edge_weights = (P * patch_pixels * C + m.classes * C) / T;
    }
    const double matmul_weights = block_weights + edge_weights;
    const double attention = L * 4.0 * T * C;
    FlopsPerToken f;
    f.forward = 2.0 * matmul_weights + attention;
    f.training = 3.0 * f.forward;
    return f;
}

std::string format_flops(double flops) {
    const char* units[] = {"", "K", "M", "G", "T", "P", "E"};
    int u = 0;
    while (flops >= 1000 && u < 6) {
        flops /= 1000;
        ++u;
    }
    return fmt::format("{:.3g} {}FLOP", flops, units[u]);
}

namespace {

// The one parameter formula, in N = int64_t (exact) or double (cannot overflow).
template <class N>
N count_parameters(const ModelConfig& m) {
    const N C = m.channels, L = m.layers, T = tokens_per_example(m), V = m.vocab_size;
    const N attention_block = 2 * C                   // ln1
                              + 3 * C * C + 3 * C     // qkv
                              + C * C + C             // attn proj
                              + 2 * C;                // ln2
    const N mlp = 4 * C * C + 4 * C + 4 * C * C + C;  // fc + proj
    const auto moe_blocks = static_cast<N>(moe_layer_indices(m).size());
    const N E = m.moe.experts;
    const N blocks = L * attention_block + (L - moe_blocks) * mlp + moe_blocks * (E * C + E * mlp);
    const N lnf = 2 * C;
    if (m.arch == Arch::Vit) {
        const N patch_pixels = static_cast<N>(m.patch) * m.patch, K = m.classes;
        // patch.{weight,bias}, cls, wpe, blocks, lnf, head.{weight,bias}
        return patch_pixels * C + C + C + T * C + blocks + lnf + K * C + K;
    }
    return V * C + T * C + blocks + lnf;
}

}  // namespace

int64_t parameter_count(const ModelConfig& m) { return count_parameters<int64_t>(m); }

double parameter_count_as_double(const ModelConfig& m) { return count_parameters<double>(m); }

}  // namespace upcycle
