#pragma once
// A whole model's gradients against finite differences, shared by the GPT and ViT tests.
//
// Directional derivative per tensor: (L(θ+εd) − L(θ−εd)) / 2ε against g·d, where d is a
// unit vector on that tensor mixing the analytic gradient's direction with a random one (a
// wrong gradient, in sign, scale or direction, changes the true slope along d). Aggregating
// over the whole tensor keeps the difference far above float rounding, so the tolerance can
// be tight (2%); one element-wise check on each tensor's largest gradient entry follows (5%).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/model/model.h"
#include "core/rng.h"

namespace upcycle::testing {

// Adds 0.1·N(0,1) to every parameter, so gradients are large relative to float rounding in
// the loss.
inline void make_weights_larger(Model& model, Rng& rng) {
    auto params = model.parameters().to_host();
    for (auto& x : params) x += 0.1f * rng.normal();
    model.parameters().copy_from_host(params);
}

// model.gradients() (from a Train forward and backward of the same batch) against the
// finite differences of objective(), which evaluates the loss at model.parameters().
// Restores the parameters.
inline void expect_gradients_match_finite_differences(Model& model, Rng& rng,
                                                      const std::function<double()>& objective) {
    const auto grads = model.gradients().to_host();
    const auto theta = model.parameters().to_host();
    const double eps = 1e-2;
    auto objective_at = [&](const std::vector<float>& params) {
        model.parameters().copy_from_host(params);
        return objective();
    };
    for (const auto& info : model.layout()) {
        const float* g = grads.data() + info.offset;
        std::vector<double> direction(info.numel), random(info.numel);
        double g_norm = 0, r_norm = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            random[i] = rng.normal();
            r_norm += random[i] * random[i];
            g_norm += static_cast<double>(g[i]) * g[i];
        }
        g_norm = std::sqrt(g_norm) + 1e-30;
        r_norm = std::sqrt(r_norm);
        double d_norm = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            direction[i] = g[i] / g_norm + random[i] / r_norm;
            d_norm += direction[i] * direction[i];
        }
        d_norm = std::sqrt(d_norm);
        double analytic = 0;
        for (std::size_t i = 0; i < info.numel; ++i) {
            direction[i] /= d_norm;
            analytic += static_cast<double>(g[i]) * direction[i];
        }
        auto perturbed = theta;
        auto step_along = [&](double sign) {
            for (std::size_t i = 0; i < info.numel; ++i) {
                perturbed[info.offset + i] =
                    static_cast<float>(theta[info.offset + i] + sign * eps * direction[i]);
            }
            return objective_at(perturbed);
        };
        const double plus = step_along(+1), minus = step_along(-1);
        const double numeric = (plus - minus) / (2 * eps);
        const double scale = std::max({std::fabs(analytic), std::fabs(numeric), 1e-3});
        EXPECT_LT(std::fabs(analytic - numeric) / scale, 2e-2)
            << info.name << ": analytic " << analytic << " numeric " << numeric;

        // the single largest-gradient element of this tensor
        std::size_t best = 0;
        for (std::size_t i = 1; i < info.numel; ++i) {
            if (std::fabs(g[i]) > std::fabs(g[best])) best = i;
        }
        auto single = theta;
        single[info.offset + best] += eps;
        const double up = objective_at(single);
        single[info.offset + best] -= 2 * eps;
        const double down = objective_at(single);
        const double element_numeric = (up - down) / (2 * eps);
        const double element_scale =
            std::max({std::fabs(static_cast<double>(g[best])), std::fabs(element_numeric), 1e-3});
        EXPECT_LT(std::fabs(g[best] - element_numeric) / element_scale, 5e-2)
            << info.name << "[" << best << "]: analytic " << g[best] << " numeric "
            << element_numeric;
    }
    model.parameters().copy_from_host(theta);
}

}  // namespace upcycle::testing
