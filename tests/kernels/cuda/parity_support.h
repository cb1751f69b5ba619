#pragma once
// What the CPU-vs-CUDA parity tests share (test_cuda_parity.cpp, test_cuda_expert_matmul.cpp):
// one op call as a Case that uploads the same host inputs to any backend, runs, and downloads
// its outputs by name; the magnitude-scaled comparison; and the fixture that runs a Case on
// both backends (parity) or twice on CUDA (determinism). test_cuda_parity.cpp's header
// explains which tolerance each kind of op gets.
//
// Includes no CUDA header: the GPU is reached only through the Backend interface.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"
#include "cpu_and_cuda_fixture.h"

namespace upcycle::testing {

using Floats = std::vector<float>;
using Ints = std::vector<int32_t>;

// |cuda - cpu| ≤ atol + rtol · max|cpu| over one output tensor.
struct Tolerance {
    double rtol = 0.0;
    double atol = 0.0;
};
constexpr Tolerance kExact{0.0, 0.0};
constexpr Tolerance kPointwise{1e-6, 0.0};
constexpr Tolerance kTranscendental{1e-5, 0.0};
constexpr Tolerance kReduction{1e-5, 1e-7};
constexpr Tolerance kLongReduction{1e-4, 1e-6};

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

inline std::size_t elems(int a, int b = 1, int c = 1) {
    return static_cast<std::size_t>(a) * static_cast<std::size_t>(b) * static_cast<std::size_t>(c);
}

inline Floats randn(Rng& rng, std::size_t n, float scale = 1.0f, float offset = 0.0f) {
    Floats v(n);
    for (auto& x : v) x = offset + scale * rng.normal();
    return v;
}

inline Ints random_ints(Rng& rng, std::size_t n, int below) {
    Ints v(n);
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(below)));
    return v;
}

inline std::string shape_name(std::initializer_list<int> dims) {
    std::string s;
    for (int x : dims) s += (s.empty() ? "" : "x") + std::to_string(x);
    return s;
}

// Device memory of one backend for one op call: uploads host arrays, allocates outputs,
// downloads results; everything is returned to the backend at scope exit.
class DeviceArena {
public:
    explicit DeviceArena(Backend& be) : be_(be) {}
    ~DeviceArena() {
        for (void* p : buffers_) be_.deallocate(p);
    }
    DeviceArena(const DeviceArena&) = delete;
    DeviceArena& operator=(const DeviceArena&) = delete;

    float* upload(const Floats& host) { return put(host); }
    int32_t* upload(const Ints& host) { return put(host); }
    // n floats, all NaN: an output every element of which the op must overwrite.
    float* outputs(std::size_t n) { return put(Floats(n, kNaN)); }
    // n ints, all -7: an integer output the op must overwrite.
    int32_t* int_outputs(std::size_t n) { return put(Ints(n, -7)); }
    Floats download(const float* dev, std::size_t n) { return get(dev, n); }
    Ints download(const int32_t* dev, std::size_t n) { return get(dev, n); }

private:
    template <class T>
    T* put(const std::vector<T>& host) {
        // at least one element, so that empty inputs still get a valid pointer
        const std::size_t bytes = std::max<std::size_t>(host.size(), 1) * sizeof(T);
        void* ptr = be_.allocate(bytes);
        buffers_.push_back(ptr);
        if (!host.empty()) be_.upload(ptr, host.data(), host.size() * sizeof(T));
        return static_cast<T*>(ptr);
    }
    template <class T>
    std::vector<T> get(const T* dev, std::size_t n) {
        std::vector<T> host(n);
        be_.synchronize();
        if (n > 0) be_.download(host.data(), dev, n * sizeof(T));
        return host;
    }

    Backend& be_;
    std::vector<void*> buffers_;
};

// What one op call produced, by name, downloaded to the host.
struct Outputs {
    std::vector<std::pair<std::string, Floats>> floats;
    std::vector<std::pair<std::string, Ints>> ints;
};
// One op call on given host inputs: uploads, runs, downloads. Called once per backend.
using Case = std::function<Outputs(Backend&)>;

inline void expect_close(const Floats& cpu, const Floats& cuda, Tolerance tol,
                         const std::string& what) {
    ASSERT_EQ(cpu.size(), cuda.size()) << what;
    double max_ref = 0.0;
    for (float x : cpu) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
    const double bound = tol.atol + tol.rtol * max_ref;
    std::size_t failures = 0;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(cuda[i]) - static_cast<double>(cpu[i]));
        if (!(diff <= bound) && failures++ < 5) {  // NaN on either side fails too
            ADD_FAILURE() << what << "[" << i << "]: cuda " << cuda[i] << ", cpu " << cpu[i]
                          << ", |diff| " << diff << " > " << bound;
        }
    }
    EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << cpu.size()
                            << " elements off (max|cpu| " << max_ref << ")";
}

// The negative control of expect_close: some element differs by more than tol allows
// (a control that would pass on a wrong path, e.g. bf16 rounding that never happened).
inline void expect_beyond(const Floats& ref, const Floats& out, Tolerance tol,
                          const std::string& why) {
    ASSERT_EQ(ref.size(), out.size()) << why;
    double max_ref = 0.0, max_diff = 0.0;
    for (std::size_t j = 0; j < ref.size(); ++j) {
        max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[j])));
        max_diff = std::max(max_diff,
                            std::fabs(static_cast<double>(out[j]) - static_cast<double>(ref[j])));
    }
    EXPECT_GT(max_diff, tol.atol + tol.rtol * max_ref) << why;
}

inline void expect_equal(const Ints& cpu, const Ints& cuda, const std::string& what) {
    ASSERT_EQ(cpu.size(), cuda.size()) << what;
    std::size_t failures = 0;
    for (std::size_t i = 0; i < cpu.size(); ++i) {
        if (cpu[i] != cuda[i] && failures++ < 5) {
            ADD_FAILURE() << what << "[" << i << "]: cuda " << cuda[i] << ", cpu " << cpu[i];
        }
    }
    EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << cpu.size() << " differ";
}

class ParityFixture : public CpuAndCuda {
protected:
    // The op on both backends; float outputs within tol, integer outputs equal.
    void expect_parity(const Case& run, Tolerance tol, const std::string& what) {
        SCOPED_TRACE(what);
        const Outputs want = run(cpu_);
        const Outputs got = run(*cuda_);
        ASSERT_EQ(want.floats.size(), got.floats.size());
        ASSERT_EQ(want.ints.size(), got.ints.size());
        for (std::size_t i = 0; i < want.floats.size(); ++i) {
            expect_close(want.floats[i].second, got.floats[i].second, tol,
                         what + " " + want.floats[i].first);
        }
        for (std::size_t i = 0; i < want.ints.size(); ++i) {
            expect_equal(want.ints[i].second, got.ints[i].second,
                         what + " " + want.ints[i].first);
        }
    }

    // The op twice on CUDA with the same inputs: bit-identical outputs.
    void expect_deterministic(const Case& run, const std::string& what) {
        SCOPED_TRACE(what);
        const Outputs a = run(*cuda_);
        const Outputs b = run(*cuda_);
        ASSERT_EQ(a.floats.size(), b.floats.size());
        for (std::size_t i = 0; i < a.floats.size(); ++i) {
            const Floats& x = a.floats[i].second;
            const Floats& y = b.floats[i].second;
            ASSERT_EQ(x.size(), y.size()) << a.floats[i].first;
            EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0)
                << what << " " << a.floats[i].first << " differs between two runs";
        }
        ASSERT_EQ(a.ints.size(), b.ints.size());
        for (std::size_t i = 0; i < a.ints.size(); ++i) {
            EXPECT_EQ(a.ints[i].second, b.ints[i].second) << what << " " << a.ints[i].first;
        }
    }

    Rng rng_{20240601};
};

}  // namespace upcycle::testing
