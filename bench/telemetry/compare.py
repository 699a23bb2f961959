"""Reads the JSON log lines of `lgaf train --log-format json` runs with tracing off and on
(bench/telemetry.sh) and prints the step time of each, and the overhead of tracing.

Step time is batch / samples_per_s of every logged step after the first `--skip` (warm-up),
as the trainer measured it (data wait included)."""

import argparse
import json
import statistics


def step_times(path, batch, skip):
    times = []
    with open(path) as log:
        for line in log:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            fields = record.get("fields", {})
            if record.get("message") != "step" or "samples_per_s" not in fields:
                continue
            if int(fields["step"]) <= skip:
                continue
            times.append(batch / float(fields["samples_per_s"]))
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("logs", nargs="+", help="MODE=PATH, MODE off or on")
    args = parser.parse_args()
    by_mode = {}
    for item in args.logs:
        mode, path = item.split("=", 1)
        by_mode.setdefault(mode, []).extend(step_times(path, args.batch, args.skip))
    print(f"{'tracing':>8} | {'steps':>5} | {'mean ms':>8} | {'median ms':>9}")
    rows = {}
    for mode in ("off", "on"):
        times = by_mode.get(mode, [])
        if not times:
            raise SystemExit(f"no step lines for tracing {mode}")
        mean, median = statistics.mean(times), statistics.median(times)
        rows[mode] = (mean, median)
        print(f"{mode:>8} | {len(times):>5} | {mean * 1e3:>8.2f} | {median * 1e3:>9.2f}")
    (off_mean, off_median), (on_mean, on_median) = rows["off"], rows["on"]
    print(
        f"overhead of tracing (on / off - 1): mean {100 * (on_mean / off_mean - 1):+.2f}%, "
        f"median {100 * (on_median / off_median - 1):+.2f}%"
    )


if __name__ == "__main__":
    main()
