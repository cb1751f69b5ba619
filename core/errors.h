#pragma once
// Typed errors. UserError is bad input from a person (config, checkpoint, data, CLI): it
// names the file, the key and what was expected, and the CLI prints it as one line.
// Programmer invariants use UPCYCLE_ASSERT, which is never a user's fault.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace upcycle {

class UserError : public std::runtime_error {
public:
    // file: the file at fault ("" if none); key: the config key, tensor name or option
    // ("" if none); message: what was wrong and what was expected.
    UserError(std::string file, std::string key, const std::string& message)
        : std::runtime_error(compose(file, key, message)),
          file_(std::move(file)),
          key_(std::move(key)),
          message_(message) {}
    const std::string& file() const { return file_; }
    const std::string& key() const { return key_; }
    // What was wrong, without the "file: 'key': " prefix of what().
    const std::string& message() const { return message_; }

private:
    static std::string compose(const std::string& file, const std::string& key,
                               const std::string& message) {
        std::string out;
        if (!file.empty()) out += file + ": ";
        if (!key.empty()) out += "'" + key + "': ";
        return out + message;
    }
    std::string file_;
    std::string key_;
    std::string message_;
};

// A training run whose loss or gradient norm stopped being finite. It is the run's fault, not
// the program's (a learning rate too high, bad data): the trial fails with the step named, and
// nothing after the last finite step is checkpointed.
class TrainingDiverged : public UserError {
public:
    TrainingDiverged(std::string file, int64_t step, const std::string& message)
        : UserError(std::move(file), "", message), step_(step) {}
    int64_t step() const { return step_; }

private:
    int64_t step_;
};

[[noreturn]] void assertion_failed(const char* expr, const char* file, int line,
                                   const std::string& message);

}  // namespace upcycle

#define UPCYCLE_ASSERT(cond, msg)                                                   \
    do {                                                                            \
        if (!(cond)) ::upcycle::assertion_failed(#cond, __FILE__, __LINE__, (msg)); \
    } while (0)
