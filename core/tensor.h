#pragma once
// Tensor: an owning, move-only buffer on one backend with a shape. Float32, int32 or float64
// (float64 only for small accumulators, such as the routing sums).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/backend.h"

namespace upcycle {

enum class DType { F32, I32, F64 };

std::size_t dtype_size(DType dtype);
std::string shape_string(const std::vector<int64_t>& shape);  // "[3, 4]"
int64_t shape_numel(const std::vector<int64_t>& shape);

// Returns a buffer to the backend that allocated it.
struct TensorRelease {
    Backend* backend = nullptr;
    void operator()(void* ptr) const noexcept { backend->deallocate(ptr); }
};

class Tensor {
public:
    Tensor() = default;
    Tensor(Backend& backend, std::vector<int64_t> shape, DType dtype = DType::F32);

    // A zero-filled tensor.
    static Tensor zeros(Backend& backend, std::vector<int64_t> shape, DType dtype = DType::F32);
    static Tensor from_host(Backend& backend, std::vector<int64_t> shape,
                            std::span<const float> values);
    static Tensor from_host_i32(Backend& backend, std::vector<int64_t> shape,
                                std::span<const int32_t> values);

    bool empty() const { return !buffer_; }
    const std::vector<int64_t>& shape() const { return shape_; }
    int64_t numel() const { return shape_numel(shape_); }
    std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
    DType dtype() const { return dtype_; }
    Backend& backend() const { return *backend_; }

    float* f32();
    const float* f32() const;
    int32_t* i32();
    const int32_t* i32() const;
    double* f64();
    const double* f64() const;

    std::vector<float> to_host() const;
    std::vector<int32_t> to_host_i32() const;
    void copy_from_host(std::span<const float> values);
    void copy_from_host_i32(std::span<const int32_t> values);
    void set_zero();

private:
    Backend* backend_ = nullptr;
    std::vector<int64_t> shape_;
    DType dtype_ = DType::F32;
    std::unique_ptr<void, TensorRelease> buffer_;
};

}  // namespace upcycle
