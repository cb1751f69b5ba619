#pragma once
// Shared helpers for the test suite.
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "core/config.h"

namespace upcycle::testing {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        std::random_device rd;
        path_ = std::filesystem::temp_directory_path() /
                ("upcycle_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
        std::filesystem::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

// Runs the `upcycle` binary that ctest names in UPCYCLE_BIN with these arguments; stdout and
// stderr together. exit_code is -1 if it could not run (or UPCYCLE_BIN is unset).
struct CliResult {
    int exit_code = -1;
    std::string output;
};

inline CliResult run_cli(const std::string& args) {
    const char* bin = std::getenv("UPCYCLE_BIN");
    if (!bin) return {-1, "UPCYCLE_BIN is not set (run the tests through ctest)"};
    CliResult r;
    FILE* pipe = popen((std::string(bin) + " " + args + " 2>&1").c_str(), "r");
    if (!pipe) return r;
    char buffer[4096];
    std::size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) r.output.append(buffer, n);
    const int status = pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

// A tiny GPT on synthetic Markov text: trains in well under a second per few dozen steps.
inline RunConfig tiny_synthetic_config() {
    RunConfig c;
    c.name = "tiny";
    c.model = ModelConfig{"gpt", 256, 16, 32, 2, 2, {}};
    c.data.source = "synthetic";
    c.data.synthetic_bytes = 1 << 16;
    c.train.batch_size = 8;
    c.train.steps = 20;
    c.train.lr = 3e-3;
    c.train.warmup_steps = 5;
    c.train.log_every = 1;
    c.eval.every = 10;
    c.eval.max_windows = 32;
    c.checkpoint.every = 0;
    c.checkpoint.every_seconds = 0;
    return c;
}

}  // namespace upcycle::testing
