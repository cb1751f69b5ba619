#include "core/process_liveness.h"

#include <signal.h>

#include <cerrno>
#include <charconv>

namespace upcycle {

bool process_exists(long pid) {
    if (pid <= 0) return false;
    return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

std::optional<long> trailing_pid(const std::string& id, char separator) {
    const auto at = id.rfind(separator);
    if (at == std::string::npos || at + 1 == id.size()) return std::nullopt;
    long pid = 0;
    const char* first = id.data() + at + 1;
    const char* last = id.data() + id.size();
    const auto [end, error] = std::from_chars(first, last, pid);
    if (error != std::errc() || end != last || pid <= 0) return std::nullopt;
    return pid;
}

}  // namespace upcycle
