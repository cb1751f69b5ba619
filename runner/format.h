#pragma once
// Small text formatting helpers for terminal output.
#include <string>

#include "core/eval.h"

namespace upcycle::cli {

std::string format_duration(double seconds);   // "1h02m", "3m05s", "12.3s"
std::string format_count(double value);        // "1.23M", "456K", "12"
// An evaluation's extra metrics as " | test_accuracy 0.8123 | …" ("" when it has none).
std::string format_extra_metrics(const EvalResult& result);

}  // namespace upcycle::cli
