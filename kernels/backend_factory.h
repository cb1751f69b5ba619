#pragma once
// Picks the backend a --device option names: "cpu" (default), "cuda" or "cuda:N".
#include <memory>
#include <string>

#include "core/backend.h"

namespace upcycle {

std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace upcycle
