#!/usr/bin/env bash
# The README's first command: install dependencies, build, and run the quickstart sweep on
# CPU — a tiny GPT pretrained on the King James Bible, then continued four ways (dense,
# upcycle, scratch, warmstart) at 10–100% extra compute — then print the comparison table
# and draw the plots. Interrupt it at any point and run it again: finished trials are kept
# and a cut-off trial resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Only what the job needs: the CLI, without the test suite, the benchmarks or CUDA kernels
# (scripts/test.sh turns them back on in the same build directory).
bash scripts/build.sh -DUPCYCLE_TESTS=OFF -DUPCYCLE_BENCH=OFF -DUPCYCLE_CUDA=OFF
./build/upcycle run experiments/quickstart.yaml "$@"
./build/upcycle results quickstart
./build/upcycle plot quickstart
cat <<'NEXT'

This is small-scale evidence: three seeds of a 0.2M-parameter byte-level GPT on 4 MB of text.
Read the notes under the table: a difference counts only when its 95% interval excludes 0.
At GPU scale (an NVIDIA GPU, a CUDA build: bash scripts/build.sh -DUPCYCLE_CUDA=ON, and
FineWeb tokenized into llm.c shards, as experiments/paper_lm.yaml describes):
  ./build/upcycle run experiments/paper_lm.yaml --device cuda
experiments/README.md says what each recipe measures, what it costs, and what we measured.
NEXT
