"""The PyTorch side of the step benchmark (run it through ``bench/step.sh``).

One training step of the PyTorch twin (``worker/python/lgaf_torch.py``) written the way
insightface's ``arcface_torch`` writes it: uint8 images to normalised floats on the device,
forward under autocast, the margin softmax over every class (``PartialFCSingle``: world size
1, sample rate 1), backward (through ``GradScaler`` under fp16), ``clip_grad_norm_`` of the
backbone at 5, ``torch.optim.SGD`` (momentum 0.9, weight decay 5e-4, PyTorch's default
implementation for the device) over backbone and classifier, ``zero_grad``, and
``loss.item()`` as arcface_torch logs it. The LGF statistics update is part of the forward
pass in training mode.

It reads the batch that ``step_bench`` wrote (the same bytes our side trains on) and prints
one JSON object: the wall time of each timed step in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "worker" / "python"))
from lgaf_torch import LGAF, CombinedMargin, ModelConfig, PartialFCSingle  # noqa: E402

SIDE = 112


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--fusion", required=True)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--images", type=Path, required=True, help="uint8 HWC RGB, batch x 112 x 112 x 3")
    p.add_argument("--labels", type=Path, required=True, help="int64, one per image")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--lr", type=float, default=0.1)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # torch alone reads the files: the GPU machine's python may have no numpy.
    images = torch.frombuffer(bytearray(args.images.read_bytes()), dtype=torch.uint8)
    labels = torch.frombuffer(bytearray(args.labels.read_bytes()), dtype=torch.int64)
    if images.numel() != args.batch * SIDE * SIDE * 3 or labels.numel() != args.batch:
        sys.exit(
            f"{args.images}: {images.numel()} bytes and {args.labels}: {labels.numel()} labels "
            f"do not make a batch of {args.batch} 112x112 RGB images"
        )
    images = images.view(args.batch, SIDE, SIDE, 3)

    cfg = ModelConfig(
        arch=args.arch,
        fusion=args.fusion,
        width=args.width,
        embedding_size=args.embedding_size,
        heads=args.heads,
    )
    model = LGAF(cfg).to(device).train()
    pfc = PartialFCSingle(args.classes, args.embedding_size, CombinedMargin.cosface()).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(
        [{"params": model.parameters()}, {"params": pfc.parameters()}],
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4,
    )
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    cuda = device.type == "cuda"

    def step() -> float:
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        x = x.contiguous(memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            kappa, _gamma = forward(x)
        loss = pfc(kappa, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps({"step_ms": times, "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
