#!/usr/bin/env bash
# Tracing overhead: the same `lgaf train` run (bench/telemetry/train.toml) with OTLP export
# off and on (to a real rotel collector, every step of the single rank traced), alternated
# `--pairs` times, and the step time of each side compared (bench/telemetry/compare.py).
#   bench/telemetry.sh [--pairs N]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=2
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) pairs="$2"; shift 2 ;;
        *) echo "usage: bench/telemetry.sh [--pairs N]" >&2; exit 2 ;;
    esac
done
make venv venv-otel
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
cargo build --release --quiet -p lgaf-worker --bin lgaf
rotel="$(.venv-otel/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rotel/rotel-agent"
out=bench-out/telemetry
rm -rf "$out" && mkdir -p "$out"
grpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$rotel" start --exporter blackhole --otlp-grpc-endpoint "127.0.0.1:$grpc" \
    --otlp-http-endpoint "127.0.0.1:$http" --pid-file "$out/rotel.pid" > "$out/rotel.log" 2>&1 &
rotel_pid=$!
trap 'kill $rotel_pid 2>/dev/null || true' EXIT
sleep 2
logs=()
for pair in $(seq 1 "$pairs"); do
    for mode in off on; do
        endpoint=""
        [ "$mode" = on ] && endpoint="http://127.0.0.1:$grpc"
        echo "==> pair $pair, tracing $mode"
        OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" OMP_NUM_THREADS=2 \
            target/release/lgaf --log-format json train --config bench/telemetry/train.toml \
            --checkpoint-dir "$out/store" --run-id "$mode-$pair" --fresh \
            2> "$out/$mode-$pair.log" > /dev/null
        logs+=("$mode=$out/$mode-$pair.log")
    done
done
python3 bench/telemetry/compare.py --batch 32 "${logs[@]}"
