#pragma once
// Vendor peak rates of the GPUs this project targets, from NVIDIA's datasheets: the
// denominators of MFU (upcycle bench) and of the microbenchmarks' fraction of peak. Dense
// figures (no structured sparsity); fp32 is the CUDA cores' rate (TF32 is off). Plain C++.
#include <optional>
#include <string>

namespace upcycle {

struct DevicePeaks {
    const char* name;          // the part of the device name that identifies it
    double bf16_flops;         // tensor cores, bf16 inputs, fp32 accumulation
    double fp32_flops;         // CUDA cores
    double memory_bytes_per_second;  // HBM
};

// The first entry whose name is part of device_name ("NVIDIA H100 80GB HBM3" is an H100
// SXM5); none for other devices.
inline std::optional<DevicePeaks> find_device_peaks(const std::string& device_name) {
    constexpr double kTera = 1e12;
    static constexpr DevicePeaks kTable[] = {
        {"H200", 989.4 * kTera, 66.9 * kTera, 4.8 * kTera},
        {"H100 PCIe", 756.5 * kTera, 51.2 * kTera, 2.0 * kTera},
        {"H100 NVL", 835.5 * kTera, 60.0 * kTera, 3.9 * kTera},
        {"H100", 989.4 * kTera, 66.9 * kTera, 3.35 * kTera},  // SXM5
    };
    for (const auto& peaks : kTable) {
        if (device_name.find(peaks.name) != std::string::npos) return peaks;
    }
    return std::nullopt;
}

}  // namespace upcycle
