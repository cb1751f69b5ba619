#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer: builds everything
# (gcc, CUDA off, benchmarks off) into build-asan/ with -DUPCYCLE_SANITIZE=ON and runs ctest
# there, the fuzz corpus replays included. Any sanitizer report fails its test. Extra
# arguments go to ctest, e.g. scripts/sanitize.sh -R Safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
mkdir -p build-asan
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUPCYCLE_SANITIZE=ON \
  -DUPCYCLE_CUDA=OFF -DUPCYCLE_BENCH=OFF "${launcher[@]}" > build-asan/build.log 2>&1 ||
  { cat build-asan/build.log; exit 1; }
cmake --build build-asan -j "$(nproc)" >> build-asan/build.log 2>&1 ||
  { tail -50 build-asan/build.log; exit 1; }
echo "sanitize: build ok (log in build-asan/build.log)"
# Leaks are findings too (LeakSanitizer runs at exit); UBSan prints where it fired.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:check_initialization_order=1:strict_init_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" "$@"
