#!/usr/bin/env bash
# Full-size checkpoint: one rank's LGAF-r100 + 205,990-class Partial FC + optimizer state
# (~1.4 GB) saved and resumed through the worker's own code (worker/examples/
# checkpoint_bench.rs) to file:// and to a real S3 server (moto, from .venv-s3), against
# references on the same bytes in the same run (std::fs write/read; boto3's transfer
# manager against the same moto). Prints the stall, upload throughput, commit latency and
# resume time with ratios (bench/checkpoint_full/table.py).
#   bench/checkpoint_full.sh [--stores file,s3] [--arch r100] [--classes 205990]
#                            [--driver-args "--hand-over each"]
# (--driver-args: extra flags of checkpoint_bench, e.g. the behaviour before a fix.)
# Each timed run holds `flock /tmp/lgaf-bench.lock`, so timed runs of others never overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
stores=file,s3; arch=r100; classes=205990; driver_args=
while [ $# -gt 0 ]; do
    case "$1" in
        --stores) stores="$2"; shift 2 ;;
        --arch) arch="$2"; shift 2 ;;
        --classes) classes="$2"; shift 2 ;;
        --driver-args) driver_args="$2"; shift 2 ;;
        *) echo "usage: bench/checkpoint_full.sh [--stores file,s3] [--arch r100] [--classes N] [--driver-args ARGS]" >&2
           exit 2 ;;
    esac
done
make venv venv-s3
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p lgaf-worker --example checkpoint_bench
bench="$target/release/examples/checkpoint_bench"
out=bench-out/checkpoint_full
mkdir -p "$out"
results="$out/results.jsonl"
rm -f "$results"
scratch=$(mktemp -d /tmp/lgaf-ckpt-full.XXXXXX)
moto_pid=""
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
export OMP_NUM_THREADS="$(nproc)"
# shellcheck disable=SC2206 # the driver's flags are split on purpose
common=(--arch "$arch" --classes "$classes" --json "$results" $driver_args)

# file:// first: its objects are also what the S3 reference uploads.
echo "==> file://"
flock /tmp/lgaf-bench.lock "$bench" --store "file://$scratch/file" \
    --raw-reference "$scratch/raw" "${common[@]}"

if [[ ",$stores," == *",s3,"* ]]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv-s3/bin/moto_server -H 127.0.0.1 -p "$port" > "$scratch/moto.log" 2>&1 &
    moto_pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/" > /dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf -X PUT "http://127.0.0.1:$port/lgaf-bench" > /dev/null
    echo "==> s3:// (moto on port $port)"
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
        AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
        flock /tmp/lgaf-bench.lock "$bench" --store "s3://lgaf-bench/ckpt" "${common[@]}"
    # Free moto's copy before the reference uploads the same bytes again.
    .venv-s3/bin/python - "$port" <<'PY'
import sys, boto3
s3 = boto3.resource("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}",
                    aws_access_key_id="testing", aws_secret_access_key="testing",
                    region_name="us-east-1")
s3.Bucket("lgaf-bench").objects.filter(Prefix="ckpt/").delete()
PY
    flock /tmp/lgaf-bench.lock .venv-s3/bin/python bench/checkpoint_full/s3_reference.py \
        --endpoint "http://127.0.0.1:$port" --bucket lgaf-bench \
        --dir "$scratch/file/runs/bench/ckpt/000000000001" --json "$results"
fi
.venv/bin/python bench/checkpoint_full/table.py "$results"
