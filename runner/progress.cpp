#include "runner/progress.h"

#include <unistd.h>

#include <cstdio>

namespace upcycle::cli {

Progress::Progress(std::string prefix) : prefix_(std::move(prefix)), terminal_(isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { clear_live(); }

void Progress::clear_live() {
    if (live_shown_) {
        std::fputs("\r\033[K", stderr);
        live_shown_ = false;
    }
}

void Progress::update(const std::string& line) {
    if (terminal_) {
        std::fprintf(stderr, "\r\033[K%s%s", prefix_.c_str(), line.c_str());
        std::fflush(stderr);
        live_shown_ = true;
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_plain_).count() < kPlainProgressSeconds) return;
    last_plain_ = now;
    std::fprintf(stderr, "%s%s\n", prefix_.c_str(), line.c_str());
}

void Progress::note(const std::string& line) {
    clear_live();
    std::fprintf(stderr, "%s%s\n", prefix_.c_str(), line.c_str());
    std::fflush(stderr);
}

}  // namespace upcycle::cli
