// The statistics behind `upcycle results` (runner/report/statistics.h): Student-t quantiles
// against published tables, paired differences and their intervals computed by hand, ties,
// and where a difference curve crosses zero.
#include <gtest/gtest.h>

#include <cmath>

#include "runner/report/statistics.h"

namespace upcycle {
namespace {

TEST(Statistics, StudentTQuantilesMatchTheTables) {
    // t_{0.975, df} from standard tables (NIST/SEMATECH e-Handbook, Table of t critical values)
    EXPECT_NEAR(student_t_975(1), 12.706, 1e-3);
    EXPECT_NEAR(student_t_975(2), 4.303, 1e-3);
    EXPECT_NEAR(student_t_975(4), 2.776, 1e-3);
    EXPECT_NEAR(student_t_975(10), 2.228, 1e-3);
    EXPECT_NEAR(student_t_975(30), 2.042, 1e-3);
    // beyond the table: the expansion
    EXPECT_NEAR(student_t_975(40), 2.021, 1e-3);
    EXPECT_NEAR(student_t_975(60), 2.000, 1e-3);
    EXPECT_NEAR(student_t_975(100), 1.984, 1e-3);
    EXPECT_NEAR(student_t_975(1000000), 1.95996, 1e-4);
    for (int df = 1; df < 200; ++df) EXPECT_GT(student_t_975(df), student_t_975(df + 1)) << df;
}

TEST(Statistics, SummaryIsMeanAndSampleStd) {
    const SeedSummary s = summarize({{"1", 1.0}, {"2", 2.0}, {"3", 4.0}});
    EXPECT_EQ(s.n, 3);
    EXPECT_NEAR(*s.mean, 7.0 / 3.0, 1e-12);
    // deviations −4/3, −1/3, 5/3: squares sum 42/9, over n − 1 = 2
    EXPECT_NEAR(*s.std, std::sqrt(42.0 / 9.0 / 2.0), 1e-12);
    const SeedSummary one = summarize({{"7", 3.5}});
    EXPECT_EQ(one.n, 1);
    EXPECT_EQ(*one.mean, 3.5);
    EXPECT_FALSE(one.std.has_value());
    EXPECT_EQ(summarize({}).n, 0);
    EXPECT_FALSE(summarize({}).mean.has_value());
    EXPECT_TRUE(std::isnan(*summarize({{"1", 1.0}, {"2", std::nan("")}}).mean));
}

TEST(Statistics, PairedDifferenceUsesOnlySeedsOnBothSides) {
    // Seed effects shared by both methods cancel: the unpaired spread would be large.
    const SeedValues upcycle{{"1", 2.00}, {"2", 2.31}, {"3", 1.69}, {"4", 9.0}};
    const SeedValues dense{{"1", 2.02}, {"2", 2.35}, {"3", 1.70}, {"5", 0.0}};
    const PairedDifference d = paired_difference(upcycle, dense);
    EXPECT_EQ(d.n, 3);  // seeds 4 and 5 are unpaired
    // differences −0.02, −0.04, −0.01: mean −0.07/3, deviations 1/300, −5/300, 4/300
    EXPECT_NEAR(*d.mean, -0.07 / 3, 1e-12);
    const double std = std::sqrt((1.0 + 25.0 + 16.0) / 90000.0 / 2.0);
    EXPECT_NEAR(*d.std, std, 1e-12);
    EXPECT_NEAR(*d.half_width, 4.3027 * std / std::sqrt(3.0), 1e-9);
    EXPECT_NEAR(*d.low(), *d.mean - *d.half_width, 1e-15);
    EXPECT_NEAR(*d.high(), *d.mean + *d.half_width, 1e-15);
    // −0.0233 ± 0.0380: the interval contains zero
    EXPECT_TRUE(d.tie());

    const PairedDifference clear = paired_difference({{"1", 1.0}, {"2", 1.1}, {"3", 1.2}},
                                                     {{"1", 1.5}, {"2", 1.6}, {"3", 1.8}});
    EXPECT_FALSE(clear.tie());  // −0.5, −0.5, −0.6
    EXPECT_LT(*clear.high(), 0);

    const PairedDifference single = paired_difference({{"1", 1.0}}, {{"1", 1.5}});
    EXPECT_EQ(single.n, 1);
    EXPECT_EQ(*single.mean, -0.5);
    EXPECT_FALSE(single.has_interval());
    EXPECT_FALSE(single.tie());  // no interval: neither a tie nor a finding
    EXPECT_EQ(paired_difference({{"1", 1.0}}, {{"2", 1.0}}).n, 0);
}

PairedDifference exact(double mean, double half_width) {
    PairedDifference d;
    d.n = 3;
    d.mean = mean;
    d.std = half_width;  // any value: only the interval is read
    d.half_width = half_width;
    return d;
}

TEST(Statistics, CrossoverInterpolatesWhereTheDifferenceTurnsNegative) {
    // +0.02 at 10%, −0.02 at 50%: the mean crosses at 30%; the lower bound (mean − 0.01)
    // at 10% + 40·0.01/0.04 = 20%, the upper bound (mean + 0.01) at 10% + 40·0.03/0.04 = 40%.
    const Crossover x = find_crossover(
        {{10, exact(0.02, 0.01)}, {50, exact(-0.02, 0.01)}, {100, exact(-0.05, 0.01)}});
    ASSERT_TRUE(x.known);
    EXPECT_EQ(x.estimate.where, CrossingBound::Where::At);
    EXPECT_NEAR(x.estimate.budget, 30, 1e-12);
    ASSERT_TRUE(x.earliest && x.latest);
    EXPECT_NEAR(x.earliest->budget, 20, 1e-12);
    EXPECT_NEAR(x.latest->budget, 40, 1e-12);
    EXPECT_FALSE(x.tied_everywhere);
    EXPECT_EQ(describe_bound(x.estimate), "≈30%");
}

TEST(Statistics, CrossoverCountsOnlyAGapThatStaysClosed) {
    // Negative at 25%, back above zero at 50%, negative from 100% on: the crossing is the
    // last one, between 50% and 100%.
    const Crossover x = find_crossover({{25, exact(-0.01, 0.001)},
                                        {50, exact(0.01, 0.001)},
                                        {100, exact(-0.03, 0.001)},
                                        {200, exact(-0.04, 0.001)}});
    EXPECT_EQ(x.estimate.where, CrossingBound::Where::At);
    EXPECT_NEAR(x.estimate.budget, 50 + 50 * 0.01 / 0.04, 1e-12);
}

TEST(Statistics, CrossoverBeforeBeyondAndTies) {
    const Crossover ahead = find_crossover({{10, exact(-0.05, 0.01)}, {50, exact(-0.08, 0.01)}});
    EXPECT_EQ(ahead.estimate.where, CrossingBound::Where::Before);
    EXPECT_EQ(ahead.estimate.budget, 10);
    EXPECT_EQ(describe_bound(ahead.estimate), "before 10%");
    EXPECT_EQ(ahead.latest->where, CrossingBound::Where::Before);

    const Crossover behind = find_crossover({{10, exact(0.3, 0.01)}, {100, exact(0.1, 0.01)}});
    EXPECT_EQ(behind.estimate.where, CrossingBound::Where::Beyond);
    EXPECT_EQ(behind.estimate.budget, 100);
    EXPECT_EQ(describe_bound(behind.estimate), "beyond 100%");
    EXPECT_EQ(behind.earliest->where, CrossingBound::Where::Beyond);

    // Every interval contains zero: nothing can be placed, whatever the means say.
    const Crossover tied = find_crossover({{10, exact(0.01, 0.05)}, {100, exact(-0.01, 0.05)}});
    EXPECT_TRUE(tied.tied_everywhere);
    EXPECT_EQ(tied.earliest->where, CrossingBound::Where::Before);
    EXPECT_EQ(tied.latest->where, CrossingBound::Where::Beyond);

    // One seed: an estimate, no range; a point without a mean is skipped.
    PairedDifference one;
    one.n = 1;
    one.mean = -0.02;
    const Crossover single = find_crossover({{10, PairedDifference{}}, {50, one}});
    ASSERT_TRUE(single.known);
    EXPECT_EQ(single.estimate.where, CrossingBound::Where::Before);
    EXPECT_EQ(single.estimate.budget, 50);
    EXPECT_FALSE(single.earliest.has_value());
    EXPECT_FALSE(single.tied_everywhere);
    EXPECT_FALSE(find_crossover({}).known);
}

}  // namespace
}  // namespace upcycle
