#!/usr/bin/env bash
# The README's second command (and CI's): install dependencies, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DUPCYCLE_TESTS=ON -DUPCYCLE_BENCH=ON -DUPCYCLE_CUDA=AUTO
ctest --test-dir build --output-on-failure -j "$(nproc)"
