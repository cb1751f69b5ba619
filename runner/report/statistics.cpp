#include "runner/report/statistics.h"

#include <array>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

namespace {

// t_{0.975, df} for df = 1 … 30, from the standard tables.
constexpr std::array<double, 30> kStudentT975{
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010,  2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796,  2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423};
constexpr double kNormal975 = 1.959963984540054;

double sample_std(const std::vector<double>& values, double mean) {
    double squares = 0;
    for (double v : values) squares += (v - mean) * (v - mean);
    return std::sqrt(squares / static_cast<double>(values.size() - 1));
}

double mean_of(const std::vector<double>& values) {
    double sum = 0;
    for (double v : values) sum += v;
    return sum / static_cast<double>(values.size());
}

// The budget from which `value(i)` stays negative, interpolated (see Crossover).
template <class Value>
CrossingBound crossing_of(const std::vector<const DifferencePoint*>& points, Value value) {
    const std::size_t n = points.size();
    std::size_t first_negative = n;  // the start of the all-negative tail
    while (first_negative > 0 && value(first_negative - 1) < 0) --first_negative;
    if (first_negative == 0) return {CrossingBound::Where::Before, points.front()->budget};
    if (first_negative == n) return {CrossingBound::Where::Beyond, points.back()->budget};
    const std::size_t i = first_negative - 1;  // value(i) ≥ 0 > value(i + 1)
    const double a = value(i), b = value(i + 1);
    const double b0 = points[i]->budget, b1 = points[i + 1]->budget;
    return {CrossingBound::Where::At, b0 + (b1 - b0) * a / (a - b)};
}

}  // namespace

double student_t_975(int degrees_of_freedom) {
    UPCYCLE_ASSERT(degrees_of_freedom >= 1, "Student's t needs at least one degree of freedom");
    if (degrees_of_freedom <= static_cast<int>(kStudentT975.size()))
        return kStudentT975[static_cast<std::size_t>(degrees_of_freedom - 1)];
    // Beyond the table: the Cornish-Fisher expansion around the normal quantile (error < 1e-4).
    const double z = kNormal975, v = degrees_of_freedom;
    return z + (z * z * z + z) / (4 * v) +
           (5 * std::pow(z, 5) + 16 * z * z * z + 3 * z) / (96 * v * v);
}

SeedSummary summarize(const SeedValues& values) {
    SeedSummary summary;
    summary.n = static_cast<int>(values.size());
    if (values.empty()) return summary;
    std::vector<double> v;
    for (const auto& [seed, value] : values) v.push_back(value);
    summary.mean = mean_of(v);
    if (summary.n >= 2) summary.std = sample_std(v, *summary.mean);
    return summary;
}

std::optional<double> PairedDifference::low() const {
    if (!has_interval()) return std::nullopt;
    return *mean - *half_width;
}

std::optional<double> PairedDifference::high() const {
    if (!has_interval()) return std::nullopt;
    return *mean + *half_width;
}

bool PairedDifference::tie() const { return has_interval() && *low() <= 0 && *high() >= 0; }

PairedDifference paired_difference(const SeedValues& a, const SeedValues& b) {
    std::vector<double> differences;
    for (const auto& [seed, value] : a) {
        const auto other = b.find(seed);
        if (other != b.end()) differences.push_back(value - other->second);
    }
    PairedDifference d;
    d.n = static_cast<int>(differences.size());
    if (d.n == 0) return d;
    d.mean = mean_of(differences);
    if (d.n >= 2) {
        d.std = sample_std(differences, *d.mean);
        d.half_width = student_t_975(d.n - 1) * *d.std / std::sqrt(static_cast<double>(d.n));
    }
    return d;
}

Crossover find_crossover(const std::vector<DifferencePoint>& all_points) {
    std::vector<const DifferencePoint*> points;
    for (const auto& p : all_points) {
        if (p.difference.mean && std::isfinite(*p.difference.mean)) points.push_back(&p);
    }
    Crossover crossover;
    if (points.empty()) return crossover;
    crossover.known = true;
    crossover.estimate =
        crossing_of(points, [&](std::size_t i) { return *points[i]->difference.mean; });
    bool intervals = true, tied = true;
    for (const DifferencePoint* p : points) {
        intervals = intervals && p->difference.has_interval();
        tied = tied && p->difference.tie();
    }
    crossover.tied_everywhere = intervals && tied;
    if (intervals) {
        crossover.earliest =
            crossing_of(points, [&](std::size_t i) { return *points[i]->difference.low(); });
        crossover.latest =
            crossing_of(points, [&](std::size_t i) { return *points[i]->difference.high(); });
    }
    return crossover;
}

std::string describe_bound(const CrossingBound& bound) {
    switch (bound.where) {
        case CrossingBound::Where::Before: return fmt::format("before {}%", bound.budget);
        case CrossingBound::Where::Beyond: return fmt::format("beyond {}%", bound.budget);
        case CrossingBound::Where::At: break;
    }
    return fmt::format("≈{:.0f}%", bound.budget);
}

}  // namespace upcycle
