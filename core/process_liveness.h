#pragma once
// Whether a process of this host is still alive: a worker whose PID is gone cannot be
// heartbeating, and a temporary file named after a dead writer will never be renamed.
#include <optional>
#include <string>

namespace upcycle {

// False only when no process has this PID (ESRCH); a process we may not signal is alive.
bool process_exists(long pid);

// The PID at the end of "NAME-PID" or "HOST:PID" style ids (after the last `separator`),
// if the text after it is a positive decimal number.
std::optional<long> trailing_pid(const std::string& id, char separator);

}  // namespace upcycle
