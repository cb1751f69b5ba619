#!/usr/bin/env bash
# Installs what upcycle needs from Debian's packages, skipping what is already present.
# Idempotent; run as root (or with sudo available). Used by the README and by CI.
#   --fuzz   also what scripts/fuzz.sh needs: clang, its runtimes (libFuzzer, ASan, UBSan) and
#            LLVM's OpenMP (clang does not use gcc's libgomp headers)
set -euo pipefail

packages=(
  # toolchain
  g++ cmake make pkg-config git
  # libraries
  libyaml-cpp-dev libsqlitecpp-dev libsqlite3-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libssl-dev libopenblas-openmp-dev zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev
  # data: the King James Bible (`bible`) and Fashion-MNIST (IDX files)
  bible-kjv dataset-fashion-mnist
  # multi-rank jobs: Open MPI (the MPI communicator, mpirun; the MPI tests run real ranks)
  libopenmpi-dev openmpi-bin
  # figures: `upcycle plot` draws with gnuplot (pngcairo and svg terminals)
  gnuplot-nox
  # tests: the numpy references in tests/**/test_*.py (e.g. the GPT-2 import oracle)
  python3-numpy
  # `run --executor slurm` and its test on a one-node cluster (tests/runner/slurm_cluster_test.sh)
  slurmctld slurmd munge slurm-client
)
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang libclang-rt-dev libomp-dev)
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--fuzz]" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
