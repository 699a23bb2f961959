#!/usr/bin/env bash
# Step benchmark: our training step (Trainer::train_step) against the PyTorch twin's
# (bench/step/torch_step.py) on the same batch, threads and device, alternated in one run.
#   bench/step.sh [--configs r18:0.25:64:lgf,...] [--rounds N] [--steps N] [--device cuda]
#                 [--precision fp16] [--channels-last] [--classes N] [--compile]
# Installs what it needs (the torch venv via make) first.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
cargo build --release --quiet -p lgaf-worker --example step_bench
exec "${CARGO_TARGET_DIR:-target}/release/examples/step_bench" --python .venv/bin/python "$@"
