#!/usr/bin/env python3
"""Prints bench/pfc_full.sh's table from the rows run.py wrote: per (sample rate, world
size) the peak RSS per rank, the classifier + momentum bytes per rank, the step time and its
phases, the all-reduce share, and ratios against world 1 of the same sample rate.

Usage: table.py [--classes N] [--embedding D] row-*.json
"""

import argparse
import json
import statistics


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=205990)
    ap.add_argument("--embedding", type=int, default=512)
    ap.add_argument("rows", nargs="+")
    a = ap.parse_args()
    single = a.classes * a.embedding * 4 * 2
    rows = [json.load(open(p)) for p in a.rows]
    rows.sort(key=lambda r: (-r["sample_rate"], r["workers"]))
    print(f"classifier + momentum in one process: {a.classes}*{a.embedding}*4*2 = "
          f"{single / 1e6:.1f} MB")
    head = (" rate | W | peak RSS/rank GB | vs W1 | cls+mom/rank MB | vs 1-proc | "
            "step s | vs W1 | img/s | vs W1 | fwd s | bwd s | allred s | opt s | "
            "allred share")
    print(head)
    print("-" * len(head))
    base = {}
    for r in rows:
        w = r["workers"]
        ranks = r["steps"]
        step_ids = sorted({s for d in ranks.values() for s in d}, key=int)
        # A step of the job lasts as long as its slowest rank.
        per_step = [max(ranks[k][s]["step"] for k in ranks if s in ranks[k])
                    for s in step_ids]
        step = statistics.mean(per_step)

        def phase(name):
            return statistics.mean(v.get(name, 0.0) for d in ranks.values()
                                   for v in d.values())
        rss = max(r["peak_rss_kb"]) * 1024 / 1e9
        cls = max(r["classifier_bytes"])
        imgs = w * r["batch"] / step
        if w == 1:
            base[r["sample_rate"]] = (rss, step, imgs)
        b = base.get(r["sample_rate"])

        def ratio(x, i):
            return f"{x / b[i]:5.2f}x" if b else "   - "
        allred = phase("all_reduce")
        print(f" {r['sample_rate']:4.1f} | {w} | {rss:16.2f} | {ratio(rss, 0)} | "
              f"{cls / 1e6:15.1f} | {cls / single:8.3f}x | {step:6.2f} | "
              f"{ratio(step, 1)} | {imgs:5.2f} | {ratio(imgs, 2)} | "
              f"{phase('forward'):5.2f} | {phase('backward'):5.2f} | {allred:8.2f} | "
              f"{phase('optimizer'):5.2f} | {allred / step:11.1%}")
        if "loadavg_before" in r:
            print(f"      load average (1/5/15 min) before {' '.join(r['loadavg_before'])}, "
                  f"after {' '.join(r['loadavg_after'])}")
        with_ckpt = max(r["peak_rss_with_checkpoint_kb"]) * 1024 / 1e9
        print(f"      peak RSS per rank incl. the end-of-job checkpoint: {with_ckpt:.2f} GB")
        objs = r.get("classifier_objects") or {}
        if objs:
            sizes = ", ".join(f"{k.split('/')[-1]}={v / 1e6:.1f} MB" for k, v in
                              sorted(objs.items()))
            print(f"      classifier objects of the committed checkpoint: {sizes}")


if __name__ == "__main__":
    main()
