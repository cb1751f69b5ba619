#pragma once
// OpenBLAS set-up and inspection for the CPU backend.
#include <optional>
#include <string>

namespace upcycle {

// OpenBLAS chooses its kernel set when the library is loaded, from OPENBLAS_CORETYPE if that
// is set, else by CPU detection, which for CPUs newer than the library (AMD Zen 5 with
// Debian's 0.3.21) can fall back to the Haswell (AVX2) kernels: about half the sgemm speed of
// the SkylakeX (AVX-512) ones (2048×2048×512: 207 vs 389 GFLOP/s on 2 Zen 5 cores). Some
// machine images even export OPENBLAS_CORETYPE=Haswell. So when the CPU has AVX-512F and the
// kernels in use are not an AVX-512 set, this returns "SkylakeX", for prepare_process
// (kernels/cpu/process_setup.h) to set before it re-executes the program. The person decides
// with UPCYCLE_OPENBLAS_CORETYPE: a kernel set name to force it, or "keep" to leave
// OPENBLAS_CORETYPE exactly as the environment has it. nullopt: nothing to change.
std::optional<std::string> openblas_coretype_to_set();
// Sets OPENBLAS_CORETYPE (for the re-executed image), remembering the value it replaced.
void set_openblas_coretype(const std::string& coretype);

// "OpenBLAS 0.3.21 SkylakeX, 2 threads": version, the kernel set in use and thread count;
// "... Haswell (OPENBLAS_CORETYPE from the environment), ..." when the environment chose the
// set, "... SkylakeX (replacing OPENBLAS_CORETYPE=Haswell), ..." when upcycle set it.
std::string blas_description();

// Times cblas_sgemm of out[M,N] = inp[M,K] · weight[N,K]^T (row-major, as matmul_forward)
// repeatedly for at least min_seconds; returns the median GFLOP/s over timed samples (each
// sample one call, or a small batch of calls when one call is shorter than a millisecond).
double measure_sgemm_gflops(int M, int N, int K, double min_seconds);

}  // namespace upcycle
