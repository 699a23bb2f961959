#!/usr/bin/env bash
# Loader benchmark: our decode + augment + batch pipeline vs the Python reference
# (bench/loader/py_loader.py) on the same RecordIO pack, same worker counts, same run.
#   bench/loader.sh [--images N] [--workers 1,2,8] [--batches N]
# Installs what it needs (the torch venv via make, pillow for the Python side) first.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
stamp=.venv/.installed-bench-pillow-13.0.0
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -r bench/requirements.txt
    touch "$stamp"
fi
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
cargo build --release --quiet -p lgaf-worker --example loader_bench
exec target/release/examples/loader_bench --python .venv/bin/python "$@"
