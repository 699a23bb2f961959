#!/usr/bin/env bash
# The card's job at full size on the CPU: a Partial-FC head of 205,990 classes at embedding
# 512 behind LGAF-r100, trained by a real `lgaf-coordinator --workers N --spawn-local` job of
# 1 (the single-process reference), 2 and 4 CPU workers, at sample rates 1.0 and 0.2. Per
# row: peak resident memory per rank, the classifier + momentum bytes per rank against the
# single-process 205990*512*4*2, the step time and its phases (from every rank's spans,
# bench/pfc_full/run.py), and the all-reduce share; ratios against world 1 of the same run.
#   bench/pfc_full.sh [--workers 1,2,4] [--rates 1.0,0.2] [--batch 2] [--steps 6]
#                     [--arch r100] [--classes 205990]
# Each job runs under `flock /tmp/lgaf-bench.lock`, so timed runs of others never overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=1,2,4; rates=1.0,0.2; batch=2; steps=6; arch=r100; classes=205990
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) workers="$2"; shift 2 ;;
        --rates) rates="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --arch) arch="$2"; shift 2 ;;
        --classes) classes="$2"; shift 2 ;;
        *) echo "usage: bench/pfc_full.sh [--workers 1,2,4] [--rates 1.0,0.2] [--batch B]" \
                "[--steps S] [--arch r100] [--classes N]" >&2; exit 2 ;;
    esac
done
make venv
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p lgaf-coordinator -p lgaf-worker --bins
out=bench-out/pfc_full
mkdir -p "$out"
rm -f "$out"/row-*.json
scratch=$(mktemp -d /tmp/lgaf-pfc-full.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for rate in ${rates//,/ }; do
    for n in ${workers//,/ }; do
        cfg="$scratch/train-$n-$rate.toml"
        sed -e "s/@ARCH@/$arch/" -e "s/@RATE@/$rate/" -e "s/@BATCH@/$batch/" \
            -e "s/@CLASSES@/$classes/" bench/pfc_full/train.toml > "$cfg"
        store="$scratch/store-$n-$rate"
        echo "==> $n worker(s), sample rate $rate, batch $batch per rank, $steps steps"
        flock /tmp/lgaf-bench.lock .venv/bin/python bench/pfc_full/run.py \
            --coordinator "$target/release/lgaf-coordinator" --config "$cfg" \
            --workers "$n" --steps "$steps" --store "$store" --classes "$classes" \
            --sample-rate "$rate" --batch "$batch" --log "$out/job-$n-$rate.log" --out "$out/row-$n-$rate.json"
        rm -rf "$store"
    done
done
.venv/bin/python bench/pfc_full/table.py --classes "$classes" "$out"/row-*.json
