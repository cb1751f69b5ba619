#pragma once
// Per-thread scratch memory for the CPU kernels: grows on demand and is kept (as a
// thread_local) across calls, so a training loop does not allocate on every op call.
// 64-byte aligned: rows of 16 floats line up with cache lines and AVX-512 registers.
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace upcycle::cpu {

class ThreadBuffer {
public:
    // At least `floats` floats; contents are unspecified. Valid until the next call.
    float* get(std::size_t floats) {
        if (floats > capacity_) {
            constexpr std::size_t kAlignment = 64;
            const std::size_t bytes =
                (floats * sizeof(float) + kAlignment - 1) / kAlignment * kAlignment;
            void* raw = std::aligned_alloc(kAlignment, bytes);
            if (raw == nullptr) throw std::bad_alloc();
            data_.reset(static_cast<float*>(raw));
            capacity_ = floats;
        }
        return data_.get();
    }

private:
    struct Free {
        void operator()(float* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<float, Free> data_;
    std::size_t capacity_ = 0;
};

}  // namespace upcycle::cpu
