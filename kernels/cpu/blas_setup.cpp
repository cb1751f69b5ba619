#include "kernels/cpu/blas_setup.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cpu/process_setup.h"

namespace upcycle {

namespace {

constexpr const char* kCoretypeVariable = "OPENBLAS_CORETYPE";
// Set before the re-exec so the new image never re-executes itself again.
constexpr const char* kReexecMarker = kProcessReexecMarker;
constexpr const char* kAvx512Coretype = "SkylakeX";
// The user's explicit choice ("keep" leaves OPENBLAS_CORETYPE alone).
constexpr const char* kUpcycleCoretypeVariable = "UPCYCLE_OPENBLAS_CORETYPE";
// Records the OPENBLAS_CORETYPE that the re-exec replaced, for blas_description().
constexpr const char* kReplacedVariable = "UPCYCLE_BLAS_REPLACED_CORETYPE";

// A timed sample should last at least this long, so timer resolution and call overhead
// do not dominate; shorter calls are batched.
constexpr double kMinSampleSeconds = 1e-3;
constexpr int kMinSamples = 3;

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool avx512_kernels_in_use() {
    // OpenBLAS 0.3.21's AVX-512 kernel sets; newer releases add to this list.
    static constexpr const char* kAvx512Cores[] = {"skylakex", "cooperlake", "sapphirerapids"};
    std::string core = openblas_get_corename();
    std::transform(core.begin(), core.end(), core.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return std::any_of(std::begin(kAvx512Cores), std::end(kAvx512Cores),
                       [&](const char* name) { return core == name; });
}

}  // namespace

std::optional<std::string> openblas_coretype_to_set() {
#if defined(__x86_64__) || defined(__i386__)
    if (std::getenv(kReexecMarker) != nullptr) return std::nullopt;  // already re-executed
    const char* requested = std::getenv(kUpcycleCoretypeVariable);
    const char* current = std::getenv(kCoretypeVariable);
    std::string wanted;
    if (requested != nullptr) {
        if (std::string(requested) == "keep") return std::nullopt;  // leave it as it is
        wanted = requested;
    } else {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512f")) return std::nullopt;
        if (avx512_kernels_in_use()) return std::nullopt;  // detection got it right
        wanted = kAvx512Coretype;
    }
    if (current != nullptr && wanted == current) return std::nullopt;
    return wanted;
#else
    return std::nullopt;
#endif
}

void set_openblas_coretype(const std::string& coretype) {
    if (const char* current = std::getenv(kCoretypeVariable)) setenv(kReplacedVariable, current, 1);
    setenv(kCoretypeVariable, coretype.c_str(), 1);
}

std::string blas_description() {
    // openblas_get_config() looks like "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell
    // MAX_THREADS=64": keep the library name and version, then the kernel set in use.
    std::istringstream config(openblas_get_config());
    std::string name, version;
    config >> name >> version;
    std::ostringstream out;
    out << (name.empty() ? "OpenBLAS" : name);
    if (!version.empty()) out << ' ' << version;
    out << ' ' << openblas_get_corename();
    if (const char* replaced = std::getenv(kReplacedVariable)) {
        out << " (replacing " << kCoretypeVariable << "=" << replaced << ")";
    } else if (std::getenv(kCoretypeVariable) != nullptr && std::getenv(kReexecMarker) == nullptr) {
        out << " (" << kCoretypeVariable << " from the environment)";
    }
    out << ", " << openblas_get_num_threads() << " threads";
    return out.str();
}

double measure_sgemm_gflops(int M, int N, int K, double min_seconds) {
    UPCYCLE_ASSERT(M > 0 && N > 0 && K > 0, "measure_sgemm_gflops needs positive sizes");
    std::vector<float> a(static_cast<std::size_t>(M) * K), b(static_cast<std::size_t>(N) * K),
        c(static_cast<std::size_t>(M) * N);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) * 0.125f - 0.375f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 5) * 0.25f - 0.5f;
    auto call = [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(),
                    K, 0.0f, c.data(), N);
    };
    call();  // warm-up: thread pool start, page faults, buffer allocation
    auto start = std::chrono::steady_clock::now();
    call();
    const double one_call = std::max(seconds_since(start), 1e-9);
    const int batch = std::max(1, static_cast<int>(kMinSampleSeconds / one_call + 0.5));

    const double flops_per_sample = 2.0 * M * N * K * batch;
    std::vector<double> rates;
    const auto begin = std::chrono::steady_clock::now();
    while (rates.size() < static_cast<std::size_t>(kMinSamples) ||
           seconds_since(begin) < min_seconds) {
        const auto sample_start = std::chrono::steady_clock::now();
        for (int i = 0; i < batch; ++i) call();
        rates.push_back(flops_per_sample / std::max(seconds_since(sample_start), 1e-12) * 1e-9);
    }
    std::nth_element(rates.begin(), rates.begin() + rates.size() / 2, rates.end());
    return rates[rates.size() / 2];
}

}  // namespace upcycle
