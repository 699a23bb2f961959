#!/usr/bin/env bash
# Live recovery's cost in an undisturbed run: a coordinated CPU job of 3 local workers
# trained with checkpoint.live_recovery = true (a replica of the next rank's classifier
# shard on every rank, rank 0's buffers broadcast every step) and with it false (the
# reference), alternated in one run, the same config otherwise. Prints samples/s of each
# round (the coordinator's step lines, the first 10 steps left out as warm-up) and the
# ratio of the medians.
#   bench/live_overhead.sh [--rounds N] [--images-per-identity N] [--classes N]
# Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv >/dev/null
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
cargo build --release --quiet --bins
exec python3 bench/live_overhead/run.py --bin "${CARGO_TARGET_DIR:-target}/release" "$@"
