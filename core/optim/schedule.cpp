#include "core/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace upcycle {

double learning_rate(const TrainConfig& train, int64_t step) {
    UPCYCLE_ASSERT(step >= 1, "optimizer steps start at 1");
    const double base = train.lr;
    const double warmup = static_cast<double>(train.warmup_steps);
    const double s = static_cast<double>(step);
    if (warmup > 0 && s <= warmup) return base * s / warmup;
    switch (train.schedule) {
        case Schedule::Constant: return base;
        case Schedule::Rsqrt: return base * std::sqrt(std::max(warmup, 1.0) / s);
        case Schedule::Cosine: {
            const double total = static_cast<double>(train.steps);
            const double span = std::max(total - warmup, 1.0);
            const double progress = std::clamp((s - warmup) / span, 0.0, 1.0);
            const double floor = base * train.min_lr_ratio;
            return floor + (base - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
        }
    }
    UPCYCLE_ASSERT(false, "unknown schedule");
    return 0;
}

bool schedule_depends_on_horizon(Schedule schedule) { return schedule == Schedule::Cosine; }

}  // namespace upcycle
