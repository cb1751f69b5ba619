#pragma once
// The statistics behind `upcycle results`: a metric summarised over seeds, the paired
// difference of two methods over the seeds both ran (same seed = same dense parent and the
// same data order, so the seed's own luck cancels), its 95% Student-t interval, ties, and
// where a difference curve crosses zero (the extra compute at which one method overtakes
// another).
//
// A difference is a finding only when its interval excludes zero: with one seed there is no
// interval, and the report says so rather than reading a sign into noise.
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace upcycle {

// The 0.975 quantile of Student's t distribution with `degrees_of_freedom` ≥ 1: the half-width
// of a two-sided 95% interval is this times the standard error.
double student_t_975(int degrees_of_freedom);

// Values of one metric keyed by seed (run.train.seed as text).
using SeedValues = std::map<std::string, double>;

// mean ± sample std of a set of values (the seeds of one cell).
struct SeedSummary {
    int n = 0;
    std::optional<double> mean;  // NaN when one of the values is NaN
    std::optional<double> std;   // sample standard deviation, when n ≥ 2
};
SeedSummary summarize(const SeedValues& values);

// a − b over the seeds present in both.
struct PairedDifference {
    int n = 0;                         // seeds in both
    std::optional<double> mean;        // mean of the per-seed differences (n ≥ 1)
    std::optional<double> std;         // their sample std (n ≥ 2)
    std::optional<double> half_width;  // of the 95% interval mean ± half_width (n ≥ 2)

    std::optional<double> low() const;   // mean − half_width
    std::optional<double> high() const;  // mean + half_width
    // The interval contains zero: the seeds cannot tell the two apart. False without an
    // interval (one seed), which is not evidence either way: see has_interval().
    bool tie() const;
    bool has_interval() const { return half_width.has_value() && mean.has_value(); }
};
PairedDifference paired_difference(const SeedValues& a, const SeedValues& b);

// Where along the budgets a difference curve crosses zero, read as "the candidate overtakes
// the reference". Differences must be oriented so that negative means the candidate is
// better (for a metric where higher is better, pass reference − candidate).
//
// The estimate is the budget from which the mean difference stays negative, linearly
// interpolated between the last budget where it is not and the first where it is. The 95%
// range applies the same rule to the interval's bounds: the earliest end from the lower
// bound (the crossover cannot be placed before it is at least plausible), the latest from
// the upper bound (from there on the candidate is better beyond the seeds' spread).
struct CrossingBound {
    enum class Where {
        Before,
        At,
        Beyond
    };  // before the first budget run, at `budget`,
        // beyond the last one
    Where where = Where::Beyond;
    double budget = 0;  // At: the interpolated budget; Before: the first; Beyond: the last
};

struct DifferencePoint {
    double budget = 0;  // % of the sunk cost
    PairedDifference difference;
};

struct Crossover {
    bool known = false;  // false without any point that has a mean
    CrossingBound estimate;
    std::optional<CrossingBound> earliest, latest;  // the 95% range; absent with one seed
    // Every point's interval contains zero: no budget run tells the two apart.
    bool tied_everywhere = false;
};
// `points` in ascending budget; points without a mean are skipped.
Crossover find_crossover(const std::vector<DifferencePoint>& points);

// "≈37%", "before 10%", "beyond 100%".
std::string describe_bound(const CrossingBound& bound);

}  // namespace upcycle
