"""All-reduce benchmark: our TCP collective (the CPU backend, `collective-peer --case bench`)
against torch.distributed's gloo backend, same world size, same 25 MB float32 buffer, same
number of timed iterations, on this machine in the same run. Prints a table and the ratio.

Run through bench/allreduce.sh, which builds the peer and provides the torch virtualenv.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

BYTES = 25_000_000
BENCH = re.compile(r"best_ms=([\d.]+) median_ms=([\d.]+)")


def ours(peer, world, iters):
    """Best and median seconds of one all-reduce, from rank 0 of our TCP group."""
    procs = [
        subprocess.Popen(
            [peer, "--rank", str(r), "--case", "bench", "--iters", str(iters)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in range(world)
    ]
    ports = []
    for p in procs:
        line = p.stdout.readline().strip()
        if not line.startswith("PORT "):
            sys.exit(f"collective-peer: expected PORT, got {line!r}: {p.stderr.read()}")
        ports.append("127.0.0.1:" + line[5:])
    for p in procs:
        p.stdin.write(",".join(ports) + "\n")
        p.stdin.flush()
    outputs = [None] * world

    def drain(i):
        outputs[i] = procs[i].communicate()

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            sys.exit(f"collective-peer rank {i} failed: {outputs[i]}")
    m = BENCH.search(outputs[0][0])
    if not m:
        sys.exit(f"collective-peer rank 0 printed no BENCH line: {outputs[0]}")
    return float(m.group(1)) / 1e3, float(m.group(2)) / 1e3


def torch_rank(rank, world, port, iters, out):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    buf = torch.full((BYTES // 4,), float(rank + 1))
    dist.all_reduce(buf)  # warm-up, as ours does
    dist.barrier()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put((min(times), statistics.median(times)))
    dist.destroy_process_group()


def reference(world, iters):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=torch_rank, args=(r, world, port, iters, out))
             for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=600)
    for p in procs:
        p.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", required=True, help="the collective-peer binary")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    import torch

    rows = [("lgaf TCP ring (ours)", *ours(args.peer, args.world, args.iters)),
            (f"torch {torch.__version__} gloo", *reference(args.world, args.iters))]
    world = args.world
    print(f"all-reduce of {BYTES / 1e6:.0f} MB float32 (sum), {world} ranks on this machine, "
          f"{args.iters} timed iterations, {os.cpu_count()} CPUs")
    print(f"{'implementation':<28} {'best ms':>8} {'median ms':>10} {'busbw MB/s':>11}")
    for name, best, median in rows:
        # Bus bandwidth: what each rank sends per second in a ring all-reduce.
        bus = BYTES * 2 * (world - 1) / world / median / 1e6
        print(f"{name:<28} {best * 1e3:>8.1f} {median * 1e3:>10.1f} {bus:>11.0f}")
    ratio = rows[1][2] / rows[0][2]
    print(f"ratio (torch gloo median / ours median): {ratio:.2f}x "
          f"({'ours faster' if ratio > 1 else 'gloo faster'})")


if __name__ == "__main__":
    main()
