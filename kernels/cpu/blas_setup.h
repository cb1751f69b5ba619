#pragma once
// OpenBLAS set-up and inspection for the CPU backend.
#include <string>

namespace upcycle {

// OpenBLAS chooses its kernel set when the library is loaded, from OPENBLAS_CORETYPE if that
// is set, else by CPU detection, which for CPUs newer than the library (AMD Zen 5 with
// Debian's 0.3.21) can fall back to the Haswell (AVX2) kernels: about half the sgemm speed of
// the SkylakeX (AVX-512) ones (2048×2048×512: 207 vs 389 GFLOP/s on 2 Zen 5 cores). Some
// machine images even export OPENBLAS_CORETYPE=Haswell. So: when the CPU has AVX-512F and
// the kernels in use are not an AVX-512 set, this sets OPENBLAS_CORETYPE=SkylakeX and
// re-executes the running program (/proc/self/exe) with the same argv. The person decides
// with UPCYCLE_OPENBLAS_CORETYPE: a kernel set name to force it, or "keep" to leave
// OPENBLAS_CORETYPE exactly as the environment has it. A marker variable prevents a second
// re-exec; if exec fails the program just continues.
// Call it first thing in main(), before any thread is started or output written.
void ensure_fast_blas(int argc, char** argv);

// "OpenBLAS 0.3.21 SkylakeX, 2 threads": version, the kernel set in use and thread count;
// "... Haswell (OPENBLAS_CORETYPE from the environment), ..." when the environment chose the
// set, "... SkylakeX (replacing OPENBLAS_CORETYPE=Haswell), ..." when ensure_fast_blas did.
std::string blas_description();

// Times cblas_sgemm of out[M,N] = inp[M,K] · weight[N,K]^T (row-major, as matmul_forward)
// repeatedly for at least min_seconds; returns the median GFLOP/s over timed samples (each
// sample one call, or a small batch of calls when one call is shorter than a millisecond).
double measure_sgemm_gflops(int M, int N, int K, double min_seconds);

}  // namespace upcycle
