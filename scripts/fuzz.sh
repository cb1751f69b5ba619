#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang, ASan + UBSan) into build-fuzz/ and runs each for
# SECONDS (default 60) on its corpus. Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]
# (targets: the fuzz/fuzz_<target>.cpp names, e.g. safetensors sweep; default all).
# New interesting inputs collect in build-fuzz/corpus/<target> (the committed seeds in
# fuzz/corpus/ are only read); a finding is written to build-fuzz/findings/<target>/ and makes
# the script exit non-zero. fuzz/README.md: what each target covers, how to keep a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.cpp; do t="${f#fuzz/fuzz_}"; targets+=("${t%.cpp}"); done
fi

bash scripts/setup.sh --fuzz
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
mkdir -p build-fuzz
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DUPCYCLE_FUZZ=ON -DUPCYCLE_CUDA=OFF -DUPCYCLE_TESTS=OFF \
  -DUPCYCLE_BENCH=OFF "${launcher[@]}" > build-fuzz/build.log 2>&1 || { cat build-fuzz/build.log; exit 1; }
cmake --build build-fuzz --target upcycle_fuzzers -j "$(nproc)" >> build-fuzz/build.log 2>&1 ||
  { tail -50 build-fuzz/build.log; exit 1; }

status=0
for t in "${targets[@]}"; do
  exe="build-fuzz/fuzz_$t"
  [ -x "$exe" ] || { echo "fuzz: no target '$t' (fuzz/fuzz_$t.cpp)" >&2; exit 2; }
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/findings/$t"
  seeds=("fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
  case "$t" in  # libFuzzer dictionaries: tokens it splices into inputs
    safetensors) dict=(-dict=fuzz/safetensors.dict) ;;
    *) dict=(-dict=fuzz/config.dict) ;;
  esac
  log="build-fuzz/fuzz_$t.log"
  # -timeout: one input taking longer is a finding (a hang); -rss_limit_mb also caps a single
  # allocation (malloc_limit_mb defaults to it), so a size taken from a header is caught.
  if "$exe" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/findings/$t/" "${dict[@]}" \
      "build-fuzz/corpus/$t" "${seeds[@]}" > "$log" 2>&1; then
    result="no finding"
  else
    result="FINDING (see $log and build-fuzz/findings/$t/)"
    status=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz: $t: ${runs:-?} executions in ${seconds}s, $result"
done
exit $status
