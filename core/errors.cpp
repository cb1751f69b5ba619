#include "core/errors.h"

#include <sstream>

namespace upcycle {

void assertion_failed(const char* expr, const char* file, int line, const std::string& message) {
    std::ostringstream out;
    out << "internal error: " << message << " (" << expr << " at " << file << ":" << line << ")";
    throw std::logic_error(out.str());
}

}  // namespace upcycle
