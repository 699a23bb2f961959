#!/usr/bin/env bash
# The coordinator at scale: N simulated workers (a cargo example, the generated tonic
# client) against a real lgaf-coordinator on loopback, for each N, then a mass failure.
#   bench/coordinator_scale.sh [--workers 64,256,1024,4096] [--failure-workers 1024]
#                              [--heartbeat-ms 2000] [--max-requests-per-sec N] ...
# Every flag is the load generator's (coordinator/examples/load_generator/main.rs; --help).
# Builds what it needs first; needs no GPU, no libtorch and no network. Each coordinator's
# log goes to bench-out/coordinator_scale/ (the temporary stores are removed).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p lgaf-coordinator --bin lgaf-coordinator --example load_generator
# Thousands of connections: one per simulated worker, both ends in this machine.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/examples/load_generator" \
    --coordinator "$target/release/lgaf-coordinator" --out bench-out/coordinator_scale "$@"
