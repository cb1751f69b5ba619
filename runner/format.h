#pragma once
// Small text formatting helpers for terminal output.
#include <string>

namespace upcycle::cli {

std::string format_duration(double seconds);   // "1h02m", "3m05s", "12.3s"
std::string format_count(double value);        // "1.23M", "456K", "12"

}  // namespace upcycle::cli
