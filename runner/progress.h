#pragma once
// Progress on stderr for long runs: on a terminal one live line that is rewritten in place
// (trial, step, loss, budget, tokens/s, ETA) between permanent lines; otherwise (a log file,
// CI) plain lines, the live ones at most every few seconds so logs stay readable.
#include <chrono>
#include <string>

namespace upcycle::cli {

class Progress {
public:
    explicit Progress(std::string prefix);  // prefix starts every line, e.g. "[host:pid] "
    ~Progress();
    // A transient status line: replaces the live line on a terminal; throttled otherwise.
    void update(const std::string& line);
    // A permanent line (started, milestone reached, done, failed …).
    void note(const std::string& line);

private:
    void clear_live();
    std::string prefix_;
    bool terminal_;
    bool live_shown_ = false;
    std::chrono::steady_clock::time_point last_plain_{};
};

// Seconds between plain (non-terminal) progress lines.
inline constexpr double kPlainProgressSeconds = 10.0;

}  // namespace upcycle::cli
