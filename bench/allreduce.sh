#!/usr/bin/env bash
# All-reduce benchmark: our TCP collective (the CPU backend) vs torch.distributed's gloo on
# the same 25 MB buffer, same world size, same run (bench/allreduce/compare.py).
#   bench/allreduce.sh [--world N] [--iters N]
# Installs what it needs (the torch venv via make) first.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
cargo build --release --quiet -p lgaf-collective --bin collective-peer
exec .venv/bin/python bench/allreduce/compare.py --peer target/release/collective-peer "$@"
