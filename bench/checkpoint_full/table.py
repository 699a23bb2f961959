#!/usr/bin/env python3
"""Prints bench/checkpoint_full.sh's table from the JSON lines of checkpoint_bench (one per
store) and s3_reference.py: each figure with its ratio to the goal (stall under 1 s) or to
the same-run reference on the same bytes (std::fs for file://, boto3 for S3).

Usage: table.py results.jsonl
"""

import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    ref = next((r for r in rows if r.get("reference") == "boto3"), None)
    for r in rows:
        if "reference" in r:
            continue
        mb = r["bytes"] / 1e6
        s3 = r["store"].startswith("s3://")
        print(f"\n{r['store']}: {mb:.0f} MB in {len(r['objects'])} objects "
              f"({', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in r['objects'])})")
        print(f" {'figure':38} | {'measured':>12} | {'reference':>12} | ratio")
        print(" " + "-" * 78)

        def line(name, value, unit, refv=None, refname="", lower_better=True):
            if refv:
                ratio = value / refv
                note = f"{ratio:5.2f}x {refname}"
            else:
                note = ""
            ref_s = f"{refv:10.3f} {unit}" if refv else f"{'-':>12}"
            print(f" {name:38} | {value:10.3f} {unit} | {ref_s} | {note}")

        line("training stall (s)", r["stall_s"], "s", 1.0, "of the 1 s goal")
        line("  copy to host (checkpoint_objects)", r["serialise_s"], "s")
        line("  hand-over to the uploader", r["handover_s"], "s")
        if s3:
            ref_up = ref and ref["upload_mbps"]
            ref_name = "of boto3 to the same moto"
        else:
            ref_up = r.get("raw_write_s") and mb / r["raw_write_s"]
            ref_name = "of std::fs::write"
        line("upload throughput (MB/s)", r["upload_mbps"], "MB/s", ref_up, ref_name)
        line("commit: last byte -> manifest (s)", r["commit_s"], "s",
             ref["small_put_s"] if (s3 and ref) else None, "of one small boto3 PUT")
        ref_down = (ref["download_s"] if (s3 and ref) else r.get("raw_read_s"))
        line("resume: download + verify (s)", r["download_verify_s"], "s", ref_down,
             "of a plain read of the bytes" if not s3 else "of boto3's download")
        line("resume: load into the trainer (s)", r["load_s"], "s")
        line("resume total (s)", r["resume_s"], "s", ref_down, "of the plain read")
        print(f" load average before {r.get('loadavg_before', '?')}, after "
              f"{r.get('loadavg_after', '?')}; hand-over `{r.get('hand_over', 'all')}`")
        print(f" peak RSS {r['rss_peak'] / 1e9:.2f} GB (before the checkpoint "
              f"{r['rss_before'] / 1e9:.2f} GB; after saving {r['rss_peak_save'] / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
