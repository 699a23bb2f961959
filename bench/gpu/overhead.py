"""Compares the step records of two runs' histories (bench/gpu/check.sh): the single-process
trainer's and a coordinated one-worker job's. For each, the median of the trainer's own step
time (`step_seconds`) and the wall time per step between records (everything between two
steps included: heartbeats, progress reports, the coordinator's plans), after `--skip`
warm-up steps; then the coordinated run's overhead over the single process."""

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path


def steps(store: Path):
    """The `step` records of rank 0's history segments under `store`, by step."""
    records = {}
    segments = sorted(store.rglob("history/*rank0*"))
    if not segments:
        raise SystemExit(f"{store}: no rank-0 history segment under */history/")
    for segment in segments:
        for line in segment.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") == "step":
                records[int(record["step"])] = record
    return records


def summary(store: Path, skip: int):
    records = steps(store)
    timed = [records[s] for s in sorted(records) if s > skip]
    if len(timed) < 2:
        raise SystemExit(f"{store}: {len(timed)} steps after the first {skip}; need at least 2")
    step_s = statistics.median(float(r["step_seconds"]) for r in timed)
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in timed]
    wall_s = (times[-1] - times[0]).total_seconds() / (len(timed) - 1)
    return len(timed), step_s, wall_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=Path, required=True, help="store of `lgaf train`")
    parser.add_argument("--coordinated", type=Path, required=True, help="store of the job")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--skip", type=int, default=10)
    args = parser.parse_args()
    rows = {name: summary(path, args.skip) for name, path in
            (("single process", args.single), ("coordinated, 1 worker", args.coordinated))}
    print(f"| run | steps | median step ms | wall ms per step | img/s (wall) |")
    print(f"|---|---|---|---|---|")
    for name, (n, step_s, wall_s) in rows.items():
        print(f"| {name} | {n} | {step_s * 1e3:.1f} | {wall_s * 1e3:.1f} | {args.batch / wall_s:.0f} |")
    (_, s_step, s_wall), (_, c_step, c_wall) = rows.values()
    print(f"\noverhead of the distributed path (coordinated / single - 1): step "
          f"{100 * (c_step / s_step - 1):+.2f}%, wall {100 * (c_wall / s_wall - 1):+.2f}% "
          f"(goal: under 3%)")


if __name__ == "__main__":
    main()
