#!/usr/bin/env python3
"""The Python reference for the loader benchmark: the usual way to feed a face-recognition
trainer from an insightface RecordIO pack (arcface_torch's ``MXFaceDataset`` shape, AdaFace's
PIL augmentations), on ``torch.utils.data.DataLoader`` with worker processes.

    py_loader.py --rec train.rec --workers 2 --batch 128 --batches 60 [--json]

Per sample, the same work as the Rust loader: read the record through ``.idx``, unpack the
IRHeader, decode the JPEG (PIL), flip with p = 0.5, then with p = 0.2 each a random
rectangle crop with the rest zeroed, colour jitter (brightness/contrast/saturation 0.5, in
random order) and a low-resolution rescale (side x 0.2-1.0, bilinear down and up); batches
are collated to uint8 [B, 112, 112, 3] tensors (the Rust loader also hands over uint8 and
normalises on the device). With ``--output float`` each sample instead ends as arcface_torch
and AdaFace end it, ``ToTensor()`` + ``Normalize(0.5, 0.5)`` in the worker (written out with
torch ops, since torchvision is not in this venv), collated to float32 [B, 3, 112, 112]. The pack is parsed here with ``struct`` and ``mmap`` because
MXNet's reader is not in this venv; that is also what arcface_torch's loader costs per record
(its ``mx.recordio.unpack`` is the same framing in Python).
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
import os
import random
import struct
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

MAGIC = 0xCED7230A
IR_HEADER = struct.Struct("<IfQQ")
SIZE = 112


def read_index(idx_path: str) -> dict[int, int]:
    index = {}
    with open(idx_path) as f:
        for line in f:
            key, offset = line.split("\t")
            index[int(key)] = int(offset)
    return index


def read_record(buf: mmap.mmap, offset: int) -> bytes:
    """One logical record, re-joining the parts MXNet splits at embedded magic values."""
    parts = []
    while True:
        magic, lrec = struct.unpack_from("<II", buf, offset)
        if magic != MAGIC:
            raise ValueError(f"bad magic {magic:#x} at byte {offset}")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        start = offset + 8
        parts.append(buf[start : start + length])
        offset = start + ((length + 3) & ~3)
        if cflag in (0, 3):
            return struct.pack("<I", MAGIC).join(parts)


class PackDataset(Dataset):
    def __init__(self, rec: str, seed: int, float_output: bool):
        self.rec = rec
        self.float_output = float_output
        self.index = read_index(os.path.splitext(rec)[0] + ".idx")
        self.seed = seed
        self.buf = None
        header = self._payload(0)
        flag, label, _, _ = IR_HEADER.unpack_from(header)
        if flag > 0:
            first, end = struct.unpack_from("<2f", header, IR_HEADER.size)
            self.keys = list(range(1, int(first)))
        else:
            self.keys = sorted(self.index)

    def _payload(self, key: int) -> bytes:
        if self.buf is None:  # opened lazily: once per worker process
            with open(self.rec, "rb") as f:
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return read_record(self.buf, self.index[key])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        payload = self._payload(self.keys[i])
        flag, label, _, _ = IR_HEADER.unpack_from(payload)
        start = IR_HEADER.size + 4 * flag
        if flag > 0:
            label = struct.unpack_from("<f", payload, IR_HEADER.size)[0]
        img = Image.open(io.BytesIO(payload[start:])).convert("RGB")
        rng = random.Random(hash((self.seed, i)))
        img = augment(img, rng)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        if self.float_output:
            # torchvision's ToTensor (HWC uint8 -> CHW float in [0, 1]) and Normalize(0.5, 0.5).
            pixels = pixels.permute(2, 0, 1).contiguous().float().div_(255).sub_(0.5).div_(0.5)
        return pixels, int(label)


def crop_keep_position(img: Image.Image, rng: random.Random) -> Image.Image:
    """torchvision RandomResizedCrop's box (scale 0.2-1, ratio 3/4-4/3), pixels outside zeroed."""
    area = SIZE * SIZE
    for _ in range(10):
        target = area * rng.uniform(0.2, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(round((target * ratio) ** 0.5))
        h = int(round((target / ratio) ** 0.5))
        if 0 < w <= SIZE and 0 < h <= SIZE:
            x, y = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            break
    else:
        x, y, w, h = 0, 0, SIZE, SIZE
    arr = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    arr[y : y + h, x : x + w] = np.asarray(img)[y : y + h, x : x + w]
    return Image.fromarray(arr)


def jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(ops)
    for op in ops:
        img = op(img).enhance(rng.uniform(0.5, 1.5))
    return img


def low_resolution(img: Image.Image, rng: random.Random) -> Image.Image:
    side = max(1, int(SIZE * rng.uniform(0.2, 1.0)))
    return img.resize((side, side), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)


def augment(img: Image.Image, rng: random.Random) -> Image.Image:
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.2:
        img = crop_keep_position(img, rng)
    if rng.random() < 0.2:
        img = jitter(img, rng)
    if rng.random() < 0.2:
        img = low_resolution(img, rng)
    return img


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc, clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rec", required=True)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=60, help="timed batches (after 3 warm-up)")
    ap.add_argument(
        "--output",
        choices=["uint8", "float"],
        default="uint8",
        help="uint8 HWC batches, or arcface_torch's normalised float CHW batches",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    data = PackDataset(args.rec, seed=0, float_output=args.output == "float")
    loader = DataLoader(
        data,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
    )
    warmup, images, started, pids, cpu_start = 3, 0, None, [], 0.0
    while images < args.batches * args.batch:
        batches = iter(loader)
        for x, _ in batches:
            if warmup:
                warmup -= 1
                if not warmup:
                    # The main process collates; the workers decode and augment.
                    pids = [os.getpid()] + [w.pid for w in getattr(batches, "_workers", [])]
                    cpu_start = cpu_seconds(pids)
                    started = time.perf_counter()
                continue
            images += x.shape[0]
            if images >= args.batches * args.batch:
                break
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pids) - cpu_start
    result = {
        "images": images,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "images_per_s": images / elapsed,
        "images_per_cpu_s": images / cpu,
    }
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
