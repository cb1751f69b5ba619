#pragma once
// Small helpers for terminal output: text formatting, and the median the benchmarks quote.
#include <string>
#include <vector>

#include "core/eval.h"

namespace upcycle::cli {

std::string format_duration(double seconds);   // "1h02m", "3m05s", "12.3s"
std::string format_count(double value);        // "1.23M", "456K", "12"
// An evaluation's extra metrics as " | test_accuracy 0.8123 | …" ("" when it has none).
std::string format_extra_metrics(const EvalResult& result);
// The median of timings (the mean of the middle two for an even count); values non-empty.
double median(std::vector<double> values);

}  // namespace upcycle::cli
