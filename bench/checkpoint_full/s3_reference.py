#!/usr/bin/env python3
"""The S3 reference of bench/checkpoint_full.sh: the same checkpoint bytes (the object files
of the file:// run) uploaded to and downloaded from the same moto server with boto3's own
transfer manager (its defaults: 8 MB parts, 10 threads), and the latency of a small PUT
(what a manifest write costs). Appends one JSON line to --json.

Usage: s3_reference.py --endpoint URL --bucket B --dir CKPT_DIR --json OUT
"""

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import boto3


class Discard(io.RawIOBase):
    """A download target that keeps nothing (the reference should not time a disk)."""

    def writable(self):
        return True

    def write(self, b):
        return len(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    s3 = boto3.client("s3", endpoint_url=a.endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    files = sorted(p for p in Path(a.dir).rglob("*.safetensors"))
    if not files:
        raise SystemExit(f"no .safetensors objects under {a.dir}")
    total = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    for p in files:
        s3.upload_file(str(p), a.bucket, f"reference/{p.relative_to(a.dir)}")
    upload = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in files:
        s3.download_fileobj(a.bucket, f"reference/{p.relative_to(a.dir)}", Discard())
    download = time.perf_counter() - t0
    small = []
    for i in range(7):
        t = time.perf_counter()
        s3.put_object(Bucket=a.bucket, Key=f"reference/small-{i}.json", Body=b"{}" * 512)
        small.append(time.perf_counter() - t)
    for p in files:
        s3.delete_object(Bucket=a.bucket, Key=f"reference/{p.relative_to(a.dir)}")
    row = {"reference": "boto3", "bytes": total, "upload_s": upload,
           "upload_mbps": total / 1e6 / upload, "download_s": download,
           "small_put_s": statistics.median(small)}
    with open(a.json, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"boto3 reference: {total / 1e6:.0f} MB up in {upload:.2f} s "
          f"({total / 1e6 / upload:.0f} MB/s), down in {download:.2f} s; "
          f"small PUT {statistics.median(small) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
