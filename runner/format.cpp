#include "runner/format.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace upcycle::cli {

std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    if (seconds < 60) return fmt::format("{:.1f}s", seconds);
    const auto total = static_cast<long>(seconds + 0.5);
    if (total < 3600) return fmt::format("{}m{:02}s", total / 60, total % 60);
    return fmt::format("{}h{:02}m", total / 3600, (total % 3600) / 60);
}

std::string format_count(double value) {
    const char* units[] = {"", "K", "M", "G", "T"};
    int u = 0;
    while (std::fabs(value) >= 1000 && u < 4) {
        value /= 1000;
        ++u;
    }
    return u == 0 ? fmt::format("{:.0f}", value) : fmt::format("{:.2f}{}", value, units[u]);
}


std::string format_extra_metrics(const EvalResult& result) {
    std::string text;
    for (const auto& [key, value] : result.extra) text += fmt::format(" | {} {:.4f}", key, value);
    return text;
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace upcycle::cli
