#!/usr/bin/env python3
"""One row of bench/pfc_full.sh: a real `lgaf-coordinator --workers N --spawn-local` job
with the full-size Partial-FC head, observed from outside.

- Step and phase times: every rank exports its spans (`step` and its children `data_wait`,
  `forward`, `backward`, `all_reduce`, `optimizer`) over OTLP/HTTP protobuf to the small
  receiver below (stdlib only; the worker's `--trace-step-every 1` traces every step of
  every rank), which decodes just the fields it needs.
- Peak resident memory of each worker: VmHWM from /proc/<pid>/status, polled while the job
  runs (VmHWM is the process's own high-water mark, so polling cannot miss the peak).
- The classifier bytes a rank holds: its class range times the embedding times 4 bytes,
  weight and momentum; checked against the classifier objects of the committed checkpoint.

Usage: run.py --coordinator BIN --config TOML --workers N --steps S --store DIR
              --sample-rate R --batch B --log LOG --out JSON
"""

import argparse
import gzip
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path


# --- a minimal protobuf reader for OTLP's ExportTraceServiceRequest ----------------------

def fields(buf):
    """(field number, wire type, value) of each field of one message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = varint(buf, i)
            val, i = buf[i:i + size], i + size
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, val


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def any_value(buf):
    for num, wire, val in fields(buf):
        if num == 1:
            return val.decode()
        if num in (2, 3):
            return val - (1 << 64) if val >= 1 << 63 else val
        if num == 4:
            return struct.unpack("<d", val)[0]
    return None


def attributes(pairs):
    out = {}
    for kv in pairs:
        key = value = None
        for num, _, val in fields(kv):
            if num == 1:
                key = val.decode()
            elif num == 2:
                value = any_value(val)
        out[key] = value
    return out


def spans_of(request):
    """Yields dicts: name, span_id, parent, start, end (ns), attrs."""
    for num, _, rs in fields(request):
        if num != 1:
            continue
        for n2, _, ss in fields(rs):
            if n2 != 2:
                continue
            for n3, _, span in fields(ss):
                if n3 != 2:
                    continue
                s = {"attrs_raw": []}
                for n4, _, val in fields(span):
                    if n4 == 2:
                        s["span_id"] = val.hex()
                    elif n4 == 4:
                        s["parent"] = val.hex()
                    elif n4 == 5:
                        s["name"] = val.decode()
                    elif n4 == 7:
                        s["start"] = struct.unpack("<Q", val)[0]
                    elif n4 == 8:
                        s["end"] = struct.unpack("<Q", val)[0]
                    elif n4 == 9:
                        s["attrs_raw"].append(val)
                s["attrs"] = attributes(s.pop("attrs_raw"))
                yield s


class Receiver(http.server.BaseHTTPRequestHandler):
    spans = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path.endswith("/v1/traces"):
            decoded = list(spans_of(body))
            with Receiver.lock:
                Receiver.spans.extend(decoded)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# --- the job ------------------------------------------------------------------------------

def descendants(root):
    """Pids of every process below `root`."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def status_kb(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--classes", type=int, default=205990)
    ap.add_argument("--embedding", type=int, default=512)
    ap.add_argument("--sample-rate", type=float, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    env = dict(os.environ)
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "LGAF_TRACE_STEP_EVERY": "1",
        "LGAF_LOG_FORMAT": "json",
        # Each worker's libtorch gets the machine's cores; N workers share them.
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // a.workers)),
    })
    cmd = [a.coordinator, "--workers", str(a.workers), "--config", a.config,
           "--store", f"file://{a.store}", "--run-id", "pfc", "--spawn-local",
           "--max-steps", str(a.steps), "--listen", "127.0.0.1:0",
           "--heartbeat-deadline-ms", "600000", "--collective-timeout-ms", "1200000"]
    started = time.time()
    # Other work on the machine moves every figure here: say how busy it was.
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with open(a.log, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        samples = []  # (unix time, pid, VmHWM kB)
        while proc.poll() is None:
            for pid in descendants(proc.pid):
                kb = status_kb(pid, "VmHWM:")
                if kb is not None:
                    samples.append((time.time(), pid, kb))
            time.sleep(0.5)
    wall = time.time() - started
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    time.sleep(1.0)  # the last export may still be in flight
    server.shutdown()
    if proc.returncode != 0:
        sys.exit(f"the job exited {proc.returncode}; see {a.log}")

    spans = Receiver.spans
    # Training's peak is the high-water mark before the first checkpoint begins (the job
    # commits one at its end, whose serialisation is a peak of its own).
    ckpt_start = min((s["start"] / 1e9 for s in spans if s.get("name") == "checkpoint"),
                     default=float("inf"))

    def peaks(before):
        out = {}
        for t, pid, kb in samples:
            if t < before:
                out[pid] = max(out.get(pid, 0), kb)
        return sorted(out.values(), reverse=True)
    steps = {s["span_id"]: s for s in spans if s.get("name") == "step"}
    per_rank = {}
    for s in steps.values():
        rank, step = s["attrs"].get("rank"), s["attrs"].get("step")
        per_rank.setdefault(rank, {})[step] = {"step": (s["end"] - s["start"]) / 1e9}
    for s in spans:
        parent = steps.get(s.get("parent"))
        if parent is None or s["name"] == "step":
            continue
        row = per_rank[parent["attrs"]["rank"]][parent["attrs"]["step"]]
        row[s["name"]] = row.get(s["name"], 0.0) + (s["end"] - s["start"]) / 1e9
    if len(per_rank) != a.workers:
        sys.exit(f"spans from ranks {sorted(per_rank)}, expected {a.workers}; see {a.log}")

    # Classifier objects of the checkpoint the job committed at its end.
    manifests = sorted(Path(a.store).glob("runs/pfc/ckpt/*/MANIFEST.json"))
    classifier_objects = {}
    if manifests:
        for o in json.loads(manifests[-1].read_text())["objects"]:
            if o["key"].startswith("classifier/"):
                classifier_objects[o["key"]] = o["size"]

    def class_len(rank, world):
        base, rem = divmod(a.classes, world)
        return base + (1 if rank < rem else 0)

    result = {
        "workers": a.workers,
        "sample_rate": a.sample_rate,
        "batch": a.batch,
        "wall_s": wall,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "peak_rss_kb": peaks(ckpt_start)[:a.workers],
        "peak_rss_with_checkpoint_kb": peaks(float("inf"))[:a.workers],
        "classifier_bytes": [class_len(r, a.workers) * a.embedding * 4 * 2
                             for r in range(a.workers)],
        "classifier_objects": classifier_objects,
        # Steps after the first (warm-up, allocation) of every rank.
        "steps": {str(r): {str(k): v for k, v in sorted(d.items()) if k != 1}
                  for r, d in per_rank.items()},
    }
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
