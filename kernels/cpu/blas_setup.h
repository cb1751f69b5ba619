#pragma once
// OpenBLAS set-up and inspection for the CPU backend.
#include <string>

namespace upcycle {

// Debian's OpenBLAS 0.3.21 does not know AMD Zen 5 and falls back to its Haswell (AVX2)
// kernels, about half the sgemm speed of its SkylakeX (AVX-512) kernels on that CPU.
// OpenBLAS reads OPENBLAS_CORETYPE only when the library is loaded, so when the variable is
// unset and the CPU has AVX-512F, this sets OPENBLAS_CORETYPE=SkylakeX and re-executes the
// running program (/proc/self/exe) with the same argv. A marker variable prevents a second
// re-exec; a user-set OPENBLAS_CORETYPE is respected; if exec fails the program continues.
// Call it first thing in main(), before any thread is started.
void ensure_fast_blas(int argc, char** argv);

// "OpenBLAS 0.3.21 SkylakeX, 2 threads": version, the kernel set in use and thread count.
std::string blas_description();

// Times cblas_sgemm of out[M,N] = inp[M,K] · weight[N,K]^T (row-major, as matmul_forward)
// repeatedly for at least min_seconds; returns the median GFLOP/s over timed samples (each
// sample one call, or a small batch of calls when one call is shorter than a millisecond).
double measure_sgemm_gflops(int M, int N, int K, double min_seconds);

}  // namespace upcycle
