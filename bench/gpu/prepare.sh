#!/usr/bin/env bash
# Builds the GPU check's kit here, for a GPU machine where nothing can be built or installed:
# the release binaries (lgaf, lgaf-worker, lgaf-coordinator, the step benchmark) and the test
# executables with CUDA cases (lgaf-model's tests/cuda.rs, lgaf-collective's tests/nccl.rs),
# gzip'd into bench-out/gpu-kit (about 25 MB: the device tool carries at most 64 MiB).
#   bench/gpu/prepare.sh
# Then, on the GPU machine: bench/gpu/check.sh (the device tool: carry bench-out/gpu-kit).
set -euo pipefail
cd "$(dirname "$0")/../.."
make venv
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
kit=bench-out/gpu-kit
cargo build --release --quiet --bin lgaf --bin lgaf-worker --bin lgaf-coordinator
cargo build --release --quiet -p lgaf-worker --example step_bench
# A test target's executable has a hashed name: ask cargo for it.
test_executable() {
    cargo test --release --quiet -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -1
}
model_cuda=$(test_executable lgaf-model cuda)
collective_nccl=$(test_executable lgaf-collective nccl)
[ -n "$model_cuda" ] && [ -n "$collective_nccl" ] || { echo "prepare: a test executable was not built" >&2; exit 1; }
rm -rf "$kit" && mkdir -p "$kit"
pack() { gzip -c "$1" > "$kit/$2.gz"; }
pack "$target/release/lgaf" lgaf
pack "$target/release/lgaf-worker" lgaf-worker
pack "$target/release/lgaf-coordinator" lgaf-coordinator
pack "$target/release/examples/step_bench" step_bench
pack "$model_cuda" model-cuda
pack "$collective_nccl" collective-nccl
# Which source the kit is: check.sh prints it beside its results.
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo ", with uncommitted changes" || true)
echo "$(git rev-parse --short HEAD)$dirty, built $(date -u +%Y-%m-%dT%H:%MZ)" > "$kit/VERSION"
du -sh "$kit"
bytes=$(du -sb "$kit" | cut -f1)
[ "$bytes" -lt $((56 * 1024 * 1024)) ] || { echo "prepare: the kit is $bytes bytes; the device tool carries 64 MiB with the tree" >&2; exit 1; }
echo "kit ready: run bench/gpu/check.sh on the GPU machine, carrying $kit"
