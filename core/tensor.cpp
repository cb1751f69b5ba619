#include "core/tensor.h"

#include "core/errors.h"

namespace upcycle {

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::F32: return sizeof(float);
        case DType::I32: return sizeof(int32_t);
        case DType::F64: return sizeof(double);
    }
    return 0;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(shape[i]);
    }
    return out + "]";
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

Tensor::Tensor(Backend& backend, std::vector<int64_t> shape, DType dtype)
    : backend_(&backend), shape_(std::move(shape)), dtype_(dtype) {
    for (int64_t d : shape_) UPCYCLE_ASSERT(d >= 0, "negative dimension " + shape_string(shape_));
    const std::size_t n = std::max<std::size_t>(bytes(), 1);
    buffer_ = std::unique_ptr<void, TensorRelease>(backend.allocate(n), TensorRelease{&backend});
}

Tensor Tensor::zeros(Backend& backend, std::vector<int64_t> shape, DType dtype) {
    Tensor t(backend, std::move(shape), dtype);
    t.set_zero();
    return t;
}

Tensor Tensor::from_host(Backend& backend, std::vector<int64_t> shape,
                         std::span<const float> values) {
    Tensor t(backend, std::move(shape), DType::F32);
    t.copy_from_host(values);
    return t;
}

Tensor Tensor::from_host_i32(Backend& backend, std::vector<int64_t> shape,
                             std::span<const int32_t> values) {
    Tensor t(backend, std::move(shape), DType::I32);
    t.copy_from_host_i32(values);
    return t;
}

float* Tensor::f32() {
    UPCYCLE_ASSERT(dtype_ == DType::F32, "tensor is not float32");
    return static_cast<float*>(buffer_.get());
}
const float* Tensor::f32() const {
    UPCYCLE_ASSERT(dtype_ == DType::F32, "tensor is not float32");
    return static_cast<const float*>(buffer_.get());
}
int32_t* Tensor::i32() {
    UPCYCLE_ASSERT(dtype_ == DType::I32, "tensor is not int32");
    return static_cast<int32_t*>(buffer_.get());
}
const int32_t* Tensor::i32() const {
    UPCYCLE_ASSERT(dtype_ == DType::I32, "tensor is not int32");
    return static_cast<const int32_t*>(buffer_.get());
}

double* Tensor::f64() {
    UPCYCLE_ASSERT(dtype_ == DType::F64, "tensor is not float64");
    return static_cast<double*>(buffer_.get());
}
const double* Tensor::f64() const {
    UPCYCLE_ASSERT(dtype_ == DType::F64, "tensor is not float64");
    return static_cast<const double*>(buffer_.get());
}

std::vector<float> Tensor::to_host() const {
    std::vector<float> out(static_cast<std::size_t>(numel()));
    if (!out.empty()) backend_->download(out.data(), f32(), bytes());
    return out;
}

std::vector<int32_t> Tensor::to_host_i32() const {
    std::vector<int32_t> out(static_cast<std::size_t>(numel()));
    if (!out.empty()) backend_->download(out.data(), i32(), bytes());
    return out;
}

void Tensor::copy_from_host(std::span<const float> values) {
    UPCYCLE_ASSERT(static_cast<int64_t>(values.size()) == numel(),
                   "host data size does not match tensor " + shape_string(shape_));
    if (!values.empty()) backend_->upload(f32(), values.data(), bytes());
}

void Tensor::copy_from_host_i32(std::span<const int32_t> values) {
    UPCYCLE_ASSERT(static_cast<int64_t>(values.size()) == numel(),
                   "host data size does not match tensor " + shape_string(shape_));
    if (!values.empty()) backend_->upload(i32(), values.data(), bytes());
}

void Tensor::set_zero() {
    if (buffer_) backend_->zero(buffer_.get(), bytes());
}

}  // namespace upcycle
