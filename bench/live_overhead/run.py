#!/usr/bin/env python3
"""Rounds of the same coordinated job with and without live recovery; see
bench/live_overhead.sh."""

import argparse
import os
import re
import statistics
import subprocess
import tempfile

CONFIG = """
[model]
arch = "r18"
width = 0.125
embedding_size = 32
[data]
batch_size = 8
workers = 1
[data.synthetic]
identities = {classes}
images_per_identity = {images}
[train]
epochs = 1
log_every = 1
[optim]
warmup_epochs = 0.0
lr_steps = []
[loss]
sample_rate = 0.5
[checkpoint]
every_steps = 0
keep_last = 1
live_recovery = {live}
"""

RATE = re.compile(r"lgaf_coordinator::service: step (\d+)/\d+ .* ([0-9.]+) samples/s")


def one_round(bins, work, live, args, n):
    folder = os.path.join(work, f"{'live' if live else 'ref'}-{n}")
    os.makedirs(folder)
    config = os.path.join(folder, "train.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(classes=args.classes, images=args.images_per_identity,
                              live=str(live).lower()))
    cmd = [os.path.join(bins, "lgaf-coordinator"), "--workers", "3", "--spawn-local",
           "--run-id", "bench", "--config", config, "--store", "file://" + folder + "/store"]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))
    if done.returncode != 0:
        raise SystemExit(f"live_overhead: the job failed:\n{done.stderr[-3000:]}")
    rates = [float(m.group(2)) for m in RATE.finditer(done.stderr) if int(m.group(1)) > 10]
    if not rates:
        raise SystemExit("live_overhead: no step lines in the coordinator's log")
    return statistics.median(rates), len(rates)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images-per-identity", type=int, default=200)
    parser.add_argument("--classes", type=int, default=12)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="lgaf-live-overhead-")
    results = {True: [], False: []}
    print(f"{'round':>5} {'live recovery':>13} {'samples/s':>10} {'steps':>6}")
    for n in range(args.rounds):
        for live in (False, True):
            rate, steps = one_round(args.bin, work, live, args, n)
            results[live].append(rate)
            print(f"{n:>5} {'on' if live else 'off':>13} {rate:>10.1f} {steps:>6}")
    on, off = statistics.median(results[True]), statistics.median(results[False])
    print(f"\nmedian samples/s: live recovery on {on:.1f}, off {off:.1f}; "
          f"on/off = {on / off:.3f}")


if __name__ == "__main__":
    main()
