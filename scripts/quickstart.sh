#!/usr/bin/env bash
# The README's first command: install dependencies, build, and train the quickstart dense
# GPT on the King James Bible on CPU (a few minutes on 2 cores). Progress goes to stderr;
# the final validation loss is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/upcycle train experiments/quickstart_dense.yaml "$@"
