#!/usr/bin/env bash
# The GPU check (issue 17, part 4), in one call on a machine with an NVIDIA GPU, its driver,
# and python3 with torch 2.11 (CUDA) and NCCL, where nothing is built or installed: it runs
# the kit that bench/gpu/prepare.sh built here (bench-out/gpu-kit, carried along).
#   bench/gpu/check.sh              on the GPU machine; the table goes to $OUT/gpu-check.md
#   bench/gpu/check.sh --rehearse   here, without a GPU: every step on the CPU with a small
#                                   model, to prove the script before GPU time is spent on it
# Without --rehearse and without a GPU it stops at once, naming what is missing.
#
# 1. CUDA tests: lgaf-model on CUDA against the CPU (fp32, fp16 with loss scaling, bf16,
#    channels-last) and real NCCL at world size 1 (every op, the watchdog and abort paths).
# 2. The step benchmark (bench/step.sh's binary) at LGAF-r100, batch 256, fp16 with loss
#    scaling, channels-last, Partial FC over 205,990 classes: ours against the PyTorch twin,
#    eager and torch.compile (goal: at least 1.25x the best PyTorch figure).
# 3. The distributed path's overhead: the same 50-step LGAF-r100 job (bench/gpu/train.toml)
#    as `lgaf train` and as a coordinated job of one worker with NCCL (goal: under 3%).
# The parts share one budget (BUDGET_S, 470 s) so the call ends well inside the device
# tool's 10 minutes; each part gets what is left, up to its own cap, and the step table is
# printed row by row, so a part cut short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/../.."
rehearse=false
[ "${1:-}" = "--rehearse" ] && rehearse=true
out="${OUT:-bench-out/gpu-check}"
mkdir -p "$out"
report="$out/gpu-check.md"
: > "$report"
kit=bench-out/gpu-kit
# The GPU machine's torch lives in /opt/torch/.venv (spec section 7).
default_python=python3
[ -x /opt/torch/.venv/bin/python3 ] && default_python=/opt/torch/.venv/bin/python3
python="${LGAF_GPU_PYTHON:-$default_python}"
deadline=$((SECONDS + ${BUDGET_S:-470}))
# Seconds a part may take: what is left of the budget, at most its cap.
limit() { # (`timeout 0` would mean no limit at all: never below 1)
    local left=$((deadline - SECONDS))
    [ "$left" -lt 1 ] && left=1
    [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
work=$(mktemp -d /tmp/lgaf-gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { echo "$*" | tee -a "$report"; }
fail() { say "gpu check FAILED: $*"; exit 1; }

# --- What the machine must have -------------------------------------------------------------
[ -d "$kit" ] || fail "no kit at $kit: run bench/gpu/prepare.sh here first and carry $kit"
torch_dir=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) ||
    fail "$python has no torch (set LGAF_GPU_PYTHON to a python with torch 2.11)"
site=$(dirname "$torch_dir")
if ! $rehearse; then
    command -v nvidia-smi > /dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver (on a machine without a GPU, run with --rehearse)"
    nvidia-smi -L | grep -q '^GPU ' || fail "nvidia-smi lists no GPU"
    "$python" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null ||
        fail "torch.cuda.is_available() is false in $python"
fi
nccl_lib=$(find "$site/nvidia" -name 'libnccl.so*' 2>/dev/null | head -1)
cudart_lib=$(find "$site/nvidia" -name 'libcudart.so*' 2>/dev/null | head -1)
if ! $rehearse; then
    [ -n "$nccl_lib" ] || fail "no libnccl.so under $site/nvidia (the nvidia-nccl-cu13 package)"
    [ -n "$cudart_lib" ] || fail "no libcudart.so under $site/nvidia"
fi
export LD_LIBRARY_PATH="$torch_dir/lib${nccl_lib:+:$(dirname "$nccl_lib")}${cudart_lib:+:$(dirname "$cudart_lib")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -n "$nccl_lib" ] && export LGAF_NCCL_LIB="$nccl_lib"
[ -n "$cudart_lib" ] && export LGAF_CUDART_LIB="$cudart_lib"
bin="$work/bin"
mkdir -p "$bin"
for f in "$kit"/*.gz; do
    name=$(basename "$f" .gz)
    gzip -dc "$f" > "$bin/$name" && chmod +x "$bin/$name"
    missing=$(ldd "$bin/$name" | grep 'not found')
    [ -z "$missing" ] || fail "$name cannot load: $missing"
done

say "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
if $rehearse; then
    say "REHEARSAL on the CPU (no GPU): small model, few steps; no figure here is a GPU result."
else
    say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
fi
say "torch: $("$python" -c 'import torch; print(torch.__version__, torch.version.cuda)'), NCCL: ${nccl_lib:-none}"
say "kit: $(cat "$kit/VERSION" 2>/dev/null || echo 'no VERSION: built by an older prepare.sh')"
say ""
status=0

# --- 1. CUDA tests --------------------------------------------------------------------------
say "## 1. CUDA tests"
say ""
say "| suite | result |"
say "|---|---|"
run_suite() { # name, timeout, executable and its arguments
    local name=$1 limit=$2
    shift 2
    local log="$work/suite.log"
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    cat "$log" >> "$out/tests.log"
    local summary
    summary=$(grep -E '^test result' "$log" | tail -1)
    local skipped
    skipped=$(grep -c 'skipped: ' "$log")
    if [ $rc -ne 0 ]; then
        say "| $name | FAILED (exit $rc) $summary |"
        status=1
    elif [ "$skipped" -gt 0 ] && ! $rehearse; then
        say "| $name | FAILED: $skipped case(s) skipped: $(grep -m1 -o 'skipped: .*' "$log") |"
        status=1
    else
        local note=""
        [ "$skipped" -gt 0 ] && note=" ($skipped skipped: no GPU)"
        say "| $name | ${summary:-no summary}$note |"
    fi
}
gpu_required=1
$rehearse && gpu_required=0
LGAF_REQUIRE_GPU=$gpu_required run_suite "lgaf-model on CUDA vs CPU" "$(limit 90)" "$bin/model-cuda" --test-threads=1 --nocapture
run_suite "lgaf-collective, real NCCL (gpu_*)" "$(limit 60)" "$bin/collective-nccl" gpu_ --test-threads=1 --nocapture
say ""

# --- 2. Step benchmark ----------------------------------------------------------------------
say "## 2. Training step: ours vs the PyTorch twin"
say ""
if $rehearse; then
    bench_args=(--device cpu --precision fp32 --classes 2000 --configs r18:0.25:16:lgf
                --rounds 1 --steps 2 --warmup 1)
else
    bench_args=(--device cuda --precision fp16 --channels-last --classes 205990
                --configs r100:1:256:lgf --rounds 1 --steps 30 --warmup 10 --threads 16)
    # torch.compile's Triton kernels need a C compiler at run time.
    if command -v cc > /dev/null || command -v gcc > /dev/null; then
        bench_args+=(--compile)
    else
        say "(no C compiler on this machine: torch.compile, which needs one for Triton, is left out)"
    fi
fi
say '```'
timeout "$(limit 240)" "$bin/step_bench" --python "$python" --out "$work/step" "${bench_args[@]}" \
    > "$work/step.out" 2> "$out/step.log"
rc=$?
cat "$work/step.out" | tee -a "$report"
say '```'
[ $rc -eq 0 ] || { say "step benchmark FAILED (exit $rc), see step.log"; status=1; }

say ""

# --- 3. Distributed overhead ----------------------------------------------------------------
say "## 3. Coordinated 1-worker job (NCCL on a GPU) vs the single-process trainer"
say ""
steps=50
skip=10
batch=128
if $rehearse; then
    export LGAF__MODEL__ARCH=r18 LGAF__MODEL__WIDTH=0.25 LGAF__DATA__BATCH_SIZE=16 \
        LGAF__DATA__WORKERS=1 LGAF__TRAIN__DEVICE=cpu LGAF__TRAIN__PRECISION=fp32
    steps=14 skip=4 batch=16
fi
export LGAF__TRAIN__MAX_STEPS=$steps
timeout "$(limit 100)" "$bin/lgaf" --log-format json train --config bench/gpu/train.toml \
    --checkpoint-dir "$work/single" --run-id single --fresh > "$out/overhead.log" 2>&1 ||
    { say "single-process run FAILED (exit $?), see overhead.log"; status=1; }
timeout "$(limit 100)" "$bin/lgaf-coordinator" --workers 1 --spawn-local --config bench/gpu/train.toml \
    --store "$work/coordinated" --run-id coordinated --max-steps $steps \
    --worker-bin "$bin/lgaf-worker" >> "$out/overhead.log" 2>&1 ||
    { say "coordinated run FAILED (exit $?), see overhead.log"; status=1; }
"$python" bench/gpu/overhead.py --single "$work/single" --coordinated "$work/coordinated" \
    --batch $batch --skip $skip 2>&1 | tee -a "$report" || status=1
unset LGAF__MODEL__ARCH LGAF__MODEL__WIDTH LGAF__DATA__BATCH_SIZE LGAF__DATA__WORKERS \
    LGAF__TRAIN__DEVICE LGAF__TRAIN__PRECISION LGAF__TRAIN__MAX_STEPS
say ""

say ""
[ $status -eq 0 ] && say "gpu check: every part ran" || say "gpu check: a part FAILED (above)"
exit $status
