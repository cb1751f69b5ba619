#!/usr/bin/env bash
# The one command a machine WITH an NVIDIA GPU runs to check everything CUDA in upcycle:
# build the CUDA build, run the CUDA tests (which report SKIPPED on machines without a GPU)
# and the full suite, run the CUDA test binaries under compute-sanitizer memcheck, and time
# the training step benchmarks. In stages, so that each fits a 10-minute remote command:
#
#   bash scripts/gpu_check.sh build      # configure build-cuda/ (Release, CUDA on), build all
#   bash scripts/gpu_check.sh test       # ctest -R 'Cuda|Gpu', then the full suite
#   bash scripts/gpu_check.sh sanitize   # compute-sanitizer memcheck on tests/kernels/cuda binaries
#   bash scripts/gpu_check.sh bench      # upcycle bench on cuda: fp32, bf16, MoE; the PyTorch
#                                        # reference (kernels/bench/pytorch_gpt.py) when torch
#                                        # imports; bench-moe; upcycle_cuda_bench
#   bash scripts/gpu_check.sh all        # every stage in turn (goes on after a failed stage)
#
# From prebuilt binaries (a GPU machine without the project's Debian packages, e.g. the binaries
# of a kit built elsewhere): BIN_DIR=DIR bash scripts/gpu_check.sh all skips the build stage,
# runs the CUDA test binaries in DIR directly instead of through ctest, and benchmarks DIR's
# upcycle. The last thing printed is a summary table: every step, its status and seconds, and
# the MFU lines of the benchmarks (also in summary.txt).
#
# Everything printed also goes to one log per stage (build.log, test.log, sanitize.log,
# bench.log, and nvidia-smi.log) in "${OUT:-build-cuda/gpu_check}". The exit status is
# non-zero when any stage (or any step of one) failed; a failed step does not hide the rest.
#
# Environment knobs:
#   OUT                    log directory (default build-cuda/gpu_check)
#   BIN_DIR                prebuilt binaries (upcycle, test_cuda_*, ...) to use instead of a build
#   JOBS                   build / ctest parallelism (default: nproc)
#   SANITIZE_TIMEOUT       seconds per binary under the sanitizer (default 180)
#   SANITIZE_TRAINING_FILTER  GTest filter for test_cuda_training under the sanitizer
#                          (default: the checkpoint and gradient-accumulation tests, the
#                          shortest ones that still drive whole trainer runs on the GPU)
#   BENCH_STEPS            timed steps for upcycle bench (default: the command's own)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=build-cuda
BIN="${BIN_DIR:-$BUILD_DIR}"  # where the binaries are: a build, or prebuilt ones
OUT_DIR="${OUT:-$BUILD_DIR/gpu_check}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/steps.tsv"  # stage, status, seconds, step: one line per step, for the summary

usage() {
    # the header comment above
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# Runs one step of a stage: prints it, runs it, and records a failure without stopping the
# stage (the stage's exit status says whether any step failed).
FAILED_STEPS=()
STAGE_NAME=""
step() {
    echo
    echo "==> $*"
    local rc=0 start=$SECONDS
    "$@" || rc=$?
    local status=ok
    if [ "$rc" -ne 0 ]; then
        echo "!!! failed (exit $rc): $*"
        FAILED_STEPS+=("$* (exit $rc)")
        status="FAILED($rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$STAGE_NAME" "$status" "$((SECONDS - start))" \
        "$(echo "$*" | sed "s|$BIN/||g" | cut -c1-90)" >> "$SUMMARY"
    return 0
}

finish_stage() {
    local name="$1"
    if [ "${#FAILED_STEPS[@]}" -ne 0 ]; then
        echo
        echo "stage $name: ${#FAILED_STEPS[@]} step(s) failed:"
        printf '  %s\n' "${FAILED_STEPS[@]}"
        return 1
    fi
    echo
    echo "stage $name: ok"
}

need_build() {
    if [ ! -x "$BIN/upcycle" ]; then
        if [ -n "${BIN_DIR:-}" ]; then
            echo "no upcycle in BIN_DIR=$BIN_DIR" >&2
        else
            echo "no $BUILD_DIR/upcycle: run 'bash scripts/gpu_check.sh build' first" >&2
        fi
        return 1
    fi
}

show_gpu() {
    echo "==> nvidia-smi"
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi || echo "nvidia-smi failed (exit $?)"
    else
        echo "nvidia-smi not found: this machine may have no NVIDIA driver"
    fi
}

# Prebuilt binaries link NCCL, which a GPU machine may have only inside PyTorch's wheels
# (site-packages/nvidia/nccl/lib): put it on LD_LIBRARY_PATH when the loader does not find it,
# and say which libraries are still missing, before any step fails to start on them.
find_libraries() {
    [ -x "$BIN/upcycle" ] || return 0
    if ldd "$BIN/upcycle" 2>/dev/null | grep -q 'libnccl.*not found'; then
        local nccl_dir
        nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
        if [ -n "$nccl_dir" ] && [ -d "$nccl_dir" ]; then
            export LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "==> libnccl from PyTorch's wheel: $nccl_dir"
        fi
    fi
    local missing
    missing=$(ldd "$BIN"/upcycle "$BIN"/test_cuda_* "$BIN"/test_nccl_* 2>/dev/null | grep 'not found' | sort -u || true)
    if [ -n "$missing" ]; then
        echo "==> libraries still missing:"
        echo "$missing"
    fi
}

# ---- stages ----------------------------------------------------------------------------------

stage_build() {
    local nvcc_dir=""
    if ! command -v nvcc > /dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
        nvcc_dir=/usr/local/cuda/bin  # CMakeLists.txt looks there too; for the version line
    fi
    echo "==> nvcc: $("${nvcc_dir:+$nvcc_dir/}nvcc" --version 2>/dev/null | tail -n 1 || echo 'not found')"
    echo "==> configure $BUILD_DIR"
    cmake -S . -B "$BUILD_DIR" -DUPCYCLE_CUDA=ON -DCMAKE_BUILD_TYPE=Release
    echo "==> build $BUILD_DIR (-j$JOBS)"
    cmake --build "$BUILD_DIR" -j "$JOBS"
    echo
    echo "stage build: ok"
}

# Fails when a CUDA test in the last ctest run was skipped for want of a GPU (a GPU check
# that skipped everything would otherwise look green).
no_cuda_skips() {
    local log="" candidate
    # LastTest.log (LastTest_<time>.log in dashboard mode) holds every test's output;
    # LastTestsFailed.log and LastTestsDisabled.log are lists of names
    for candidate in "$BUILD_DIR"/Testing/Temporary/LastTest.log \
        "$BUILD_DIR"/Testing/Temporary/LastTest_*.log; do
        if [ -e "$candidate" ] && { [ -z "$log" ] || [ "$candidate" -nt "$log" ]; }; then
            log="$candidate"
        fi
    done
    if [ -z "$log" ]; then
        echo "no ctest log under $BUILD_DIR/Testing/Temporary" >&2
        return 1
    fi
    if grep -q "no CUDA backend" "$log"; then
        echo "CUDA tests were SKIPPED (no usable GPU):" >&2
        grep "no CUDA backend" "$log" | sort | uniq -c >&2
        return 1
    fi
    echo "no CUDA test skipped for want of a GPU"
}

# A prebuilt CUDA test binary, run directly; fails if any of its tests skipped for want of a GPU.
run_cuda_test_binary() {
    local binary="$1" log rc=0
    log="$OUT_DIR/$(basename "$binary").log"
    "$binary" --gtest_brief=1 > "$log" 2>&1 || rc=$?
    tail -n 5 "$log"
    if grep -qE "no CUDA backend|built without CUDA" "$log"; then
        echo "$(basename "$binary"): tests were SKIPPED (no usable GPU or no CUDA build)" >&2
        return 1
    fi
    return "$rc"
}

stage_test() {
    need_build
    if [ -n "${BIN_DIR:-}" ]; then
        # no ctest here: every CUDA test binary in BIN_DIR, one step each
        local binary found=0
        for binary in "$BIN"/test_cuda_* "$BIN"/test_nccl_*; do
            [ -x "$binary" ] || continue
            found=1
            step run_cuda_test_binary "$binary"
        done
        if [ "$found" -eq 0 ]; then FAILED_STEPS+=("no CUDA test binary in $BIN"); fi
    else
        step ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -R 'Cuda|Gpu|Nccl' -j "$JOBS"
        step no_cuda_skips
        step ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
    fi
    finish_stage test
}

find_sanitizer() {
    if command -v compute-sanitizer > /dev/null 2>&1; then
        command -v compute-sanitizer
    elif [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
        echo /usr/local/cuda/bin/compute-sanitizer
    elif [ -x /usr/local/cuda/compute-sanitizer/compute-sanitizer ]; then
        echo /usr/local/cuda/compute-sanitizer/compute-sanitizer
    else
        return 1
    fi
}

stage_sanitize() {
    need_build
    local sanitizer
    if ! sanitizer="$(find_sanitizer)"; then
        echo "compute-sanitizer not found (PATH, /usr/local/cuda/bin): cannot run this stage" >&2
        return 1
    fi
    echo "==> $sanitizer ($("$sanitizer" --version 2>/dev/null | tail -n 1 || true))"
    local timeout_s="${SANITIZE_TIMEOUT:-180}"
    local training_filter="${SANITIZE_TRAINING_FILTER:-CudaTraining.CheckpointWrittenOnGpuLoadsOnCpu:CudaTraining.GradientAccumulationMatchesOnGpu}"
    local source name binary filter found=0
    for source in tests/kernels/cuda/test_*.cpp; do
        [ -e "$source" ] || continue
        name="$(basename "$source" .cpp)"
        binary="$BIN/$name"
        if [ ! -x "$binary" ]; then
            echo "!!! $binary not built (from $source)"
            FAILED_STEPS+=("$binary missing")
            continue
        fi
        found=1
        filter='*'
        if [ "$name" = test_cuda_training ]; then filter="$training_filter"; fi
        # memcheck: out-of-bounds and misaligned accesses, hardware exceptions, API errors
        # (leak checking is off by default). --error-exitcode turns any report into a failure.
        step timeout "$timeout_s" "$sanitizer" --tool memcheck --error-exitcode 1 \
            "$binary" --gtest_filter="$filter"
    done
    if [ "$found" -eq 0 ]; then
        FAILED_STEPS+=("no CUDA test binary found")
    fi
    finish_stage sanitize
}

stage_bench() {
    need_build
    local bin="$BIN/upcycle"
    local steps=()
    if [ -n "${BENCH_STEPS:-}" ]; then steps=(--steps "$BENCH_STEPS"); fi
    # the issue's figure: 64 × 1024 = 64K tokens per step, in 4 micro-batches of 16K tokens
    local batch=(--batch 64 --micro-batch 16)
    # First the PyTorch reference of the same model and batch (eager and torch.compile, bf16
    # autocast, fused AdamW), in the same call so that the ratio holds. It measures the bf16
    # matmul peak, which upcycle's bf16 MFU is then set against too (--peak-tflops).
    local peak=()
    if python3 -c 'import torch' > /dev/null 2>&1; then
        step python3 kernels/bench/pytorch_gpt.py --model gpt-124m "${batch[@]}" \
            --log "$OUT_DIR/pytorch_dense.txt"
        step python3 kernels/bench/pytorch_gpt.py --model gpt-124m "${batch[@]}" \
            --experts 8 --k 2 --capacity-factor 1.25 --log "$OUT_DIR/pytorch_moe.txt"
        local measured
        measured="$(sed -n 's/^measured bf16 matmul peak[^:]*: \([0-9.]*\) TFLOP.*/\1/p' \
            "$OUT_DIR/pytorch_dense.txt" 2> /dev/null | head -n 1)"
        if [ -n "$measured" ]; then peak=(--peak-tflops "$measured"); fi
    else
        echo
        echo "note: no PyTorch here (python3 -c 'import torch' failed): no reference timing, and"
        echo "      MFU is set against the device table's peak"
    fi
    step "$bin" bench --model gpt-124m --device cuda --precision fp32 "${batch[@]}" "${steps[@]}"
    step "$bin" bench --model gpt-124m --device cuda --precision bf16 "${batch[@]}" "${steps[@]}" \
        "${peak[@]}"
    step "$bin" bench --model gpt-124m --device cuda --precision bf16 "${batch[@]}" \
        --experts 8 --k 2 --capacity-factor 1.25 "${steps[@]}" "${peak[@]}"
    # one MoE layer, phase by phase (64K tokens, C 768, k 2, capacity factor 1.25)
    step "$bin" bench-moe --device cuda --precision bf16 --experts 8
    step "$bin" bench-moe --device cuda --precision bf16 --experts 32
    if [ -x "$BIN/upcycle_cuda_bench" ]; then
        step "$BIN/upcycle_cuda_bench" --benchmark_min_time=0.2
    else
        echo
        echo "note: no $BIN/upcycle_cuda_bench (built only when Google Benchmark is found)"
    fi
    finish_stage bench
}

# Runs stage $1 with its output on the terminal and in $OUT_DIR/$1.log; returns its status.
# The stage runs in a fresh bash (this script, "__stage NAME") so that `set -e` holds inside
# it: bash ignores -e in a function called from an `if` or `||`, subshells included.
run_stage() {
    local name="$1" log="$OUT_DIR/$1.log" rc
    echo "######## stage $name ($(date -u '+%Y-%m-%d %H:%M:%S UTC')), log: $log"
    set +e
    bash "$0" __stage "$name" 2>&1 | tee "$log"
    rc="${PIPESTATUS[0]}"
    set -e
    return "$rc"
}

main() {
    if [ "$#" -ne 1 ] && [ "${1:-}" != __stage ]; then
        usage
        exit 2
    fi
    local stages
    case "$1" in
        build | test | sanitize | bench) stages=("$1") ;;
        all) stages=(build test sanitize bench) ;;
        __stage)
            # internal: one stage, run by run_stage
            STAGE_NAME="$2"
            "stage_$2"
            exit $?
            ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        *)
            echo "unknown stage '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
    if [ -n "${BIN_DIR:-}" ]; then
        # prebuilt binaries: nothing to build
        local kept=()
        for name in "${stages[@]}"; do [ "$name" = build ] || kept+=("$name"); done
        stages=("${kept[@]}")
    fi
    : > "$SUMMARY"
    show_gpu 2>&1 | tee "$OUT_DIR/nvidia-smi.log"
    find_libraries  # not in a pipe: it exports LD_LIBRARY_PATH to the stages
    local name failed=()
    for name in "${stages[@]}"; do
        if ! run_stage "$name"; then
            failed+=("$name")
            # nothing else can run without a build
            if [ "$name" = build ]; then break; fi
        fi
    done
    echo
    print_summary "${failed[*]}" | tee "$OUT_DIR/summary.txt"
    if [ "${#failed[@]}" -ne 0 ]; then exit 1; fi
}

# The table printed last: each step's stage, status and seconds, the benchmarks' MFU lines,
# and the verdict.
print_summary() {
    local failed="$1"
    echo "######## summary"
    printf '%-9s %-11s %6s  %s\n' stage status seconds step
    awk -F '\t' '{ printf "%-9s %-11s %6s  %s\n", $1, $2, $3, $4 }' "$SUMMARY"
    if [ -e "$OUT_DIR/bench.log" ]; then
        echo
        grep -E '^(==> |dense MFU|MoE MFU|dense:|moe  :|pytorch |measured bf16)' "$OUT_DIR/bench.log" |
            grep -v '^==> nvidia' || true
    fi
    echo
    if [ -n "$failed" ]; then
        echo "gpu_check: FAILED stage(s): $failed (logs in $OUT_DIR)"
    else
        echo "gpu_check: ${stages[*]}: ok (logs in $OUT_DIR)"
    fi
}

main "$@"
