#!/usr/bin/env bash
# The README's first command: install dependencies, build, and run the quickstart sweep on
# CPU — a tiny GPT pretrained on the King James Bible, then continued four ways (dense,
# upcycle, scratch, warmstart) at 10–100% extra compute — then print the comparison table
# and draw the plots. Interrupt it at any point and run it again: finished trials are kept
# and a cut-off trial resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/upcycle run experiments/quickstart.yaml "$@"
./build/upcycle results quickstart
./build/upcycle plot quickstart
