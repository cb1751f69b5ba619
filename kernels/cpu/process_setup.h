#pragma once
// What the process's libraries read from the environment once, when they are loaded, set
// before they are: the OpenBLAS kernel set (kernels/cpu/blas_setup.h) and how OpenMP threads
// wait. When either needs changing, prepare_process sets it and re-executes the program
// (/proc/self/exe, same argv) once; a marker variable prevents a second re-exec, and if exec
// fails the program just continues as it is.
//
// The wait policy: an OpenMP thread that finds no work spins on its core for a while before
// it sleeps (libgomp's default), which costs nothing alone and a lot beside another busy
// process: two `upcycle bench --model gpt-tiny` at once on 2 cores made 10.7k tokens/s each
// with the default, 23.6k with passive waiting (alone: 44.6k), and beside a compiler far
// worse. Sweeps run several workers, and people run `eval` or `status` beside a sweep, so
// upcycle waits passively (OMP_WAIT_POLICY=passive) unless the environment chooses:
// OMP_WAIT_POLICY or GOMP_SPINCOUNT set is left alone.
// Call it first thing in main(), before any thread is started or output written.
#include <string>

namespace upcycle {

inline constexpr const char* kProcessReexecMarker = "UPCYCLE_PROCESS_REEXEC";

void prepare_process(int argc, char** argv);

// "passive (upcycle's default)", or "<value> (OMP_WAIT_POLICY from the environment)", or
// "spin count <n> (GOMP_SPINCOUNT from the environment)": for bench output and provenance.
std::string openmp_wait_description();

}  // namespace upcycle
