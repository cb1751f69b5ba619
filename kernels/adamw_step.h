#pragma once
// The scalars of one AdamW update, shared by every backend so that they all start from the
// same numbers: the bias corrections 1/(1 - β^t) are computed in double (1 - β^t loses digits
// in float for β2 near 1) and rounded to float once. Plain C++17, also compiled by nvcc.
#include <cmath>
#include <cstdint>

namespace upcycle {

struct AdamWStep {
    float lr, beta1, beta2, one_minus_b1, one_minus_b2, eps, weight_decay, grad_scale;
    float inv_bc1, inv_bc2;  // 1 / (1 - β^t)
};

inline AdamWStep make_adamw_step(float lr, float beta1, float beta2, float eps,
                                 float weight_decay, float grad_scale, int64_t step) {
    const double t = static_cast<double>(step);
    return AdamWStep{lr,
                     beta1,
                     beta2,
                     1.0f - beta1,
                     1.0f - beta2,
                     eps,
                     weight_decay,
                     grad_scale,
                     static_cast<float>(1.0 / (1.0 - std::pow(double(beta1), t))),
                     static_cast<float>(1.0 / (1.0 - std::pow(double(beta2), t)))};
}

}  // namespace upcycle
