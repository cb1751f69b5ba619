#pragma once
// The fixture of the GPU tests: the CPU backend (the specification) beside the CUDA backend;
// without a CUDA backend (a build without CUDA, no device) every test reports SKIPPED with
// the reason.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "test_support.h"

namespace upcycle::testing {

class CpuAndCuda : public ::testing::Test {
protected:
    void SetUp() override {
        std::string why;
        cuda_ = cuda_backend_or_null(why);
        if (!cuda_) GTEST_SKIP() << "no CUDA backend: " << why;
        ASSERT_EQ(cuda_->kind(), DeviceKind::CUDA) << cuda_->describe();
    }

    CpuBackend cpu_;
    std::unique_ptr<Backend> cuda_;
};

}  // namespace upcycle::testing
