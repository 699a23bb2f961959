#!/usr/bin/env python3
"""Writes an LGAF model as ONNX through its PyTorch twin (``lgaf_torch.py``), for ``lgaf
export --format onnx``, which embeds this file and runs it with the project's Python.

    export_onnx.py --weights W.safetensors --arch r100 --fusion lgf --heads 4 --width 1 \
        --embedding-size 512 --out model.onnx [--opset 18]

The graph takes what insightface's recognition models take: ``input`` [N, 3, 112, 112]
float32 RGB, normalised as (x - 127.5) / 127.5, any N; it gives ``embedding`` [N, D], the
fused feature kappa before L2 normalisation (as insightface's models give theirs; the
verification embedding is kappa / ||kappa||). The model is in eval mode: BatchNorm and LGF
use their stored statistics.

Then it checks what it wrote: the ONNX checker (full check, with shape inference), and
onnxruntime's output on random batches of two sizes against PyTorch's, within
``TOLERANCE`` of the output's scale. The file is written beside ``--out`` and renamed to it
only when both checks pass. The last line of stdout is a JSON object: opset, inputs and
outputs, and the largest difference seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lgaf_torch import LGAF, LgfConfig, ModelConfig  # noqa: E402

#: The largest difference allowed between onnxruntime and PyTorch, relative to the largest
#: output (fp32 reassociation in a deep network stays near 1e-5).
TOLERANCE = 1e-3


class Embedder(nn.Module):
    """The network's inference path: normalised images -> kappa."""

    def __init__(self, model: LGAF):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--fusion", required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--embedding-size", type=int, required=True)
    p.add_argument("--kernels", default="1,3,5")
    p.add_argument("--mid-channels", type=int, default=None)
    p.add_argument("--lgf-h", type=float, default=0.333)
    p.add_argument("--opset", type=int, default=18)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    cfg = ModelConfig(
        arch=args.arch,
        fusion=args.fusion,
        width=args.width,
        embedding_size=args.embedding_size,
        heads=args.heads,
        kernels=tuple(int(k) for k in args.kernels.split(",")),
        mid_channels=args.mid_channels,
        lgf=LgfConfig(h=args.lgf_h),
    )
    model = LGAF(cfg)
    # Strict: every name and shape of the file must be the model's (the Rust side checked
    # them already, with its own messages).
    model.load_state_dict(load_file(args.weights), strict=True)
    embedder = Embedder(model).eval()

    example = torch.zeros(2, 3, 112, 112)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        # torch's maintained exporter (torch.export, then onnxscript); it writes opset 18 or
        # later (the deprecated TorchScript exporter is the only one that writes 17).
        program = torch.onnx.export(
            embedder,
            (example,),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=args.opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    partial = args.out + ".partial"
    program.save(partial)

    proto = onnx.load(partial)
    written = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != args.opset:
        sys.exit(f"asked for opset {args.opset}, the exporter wrote {written}")
    props = {
        "producer": "LGAF-Train lgaf export",
        "arch": cfg.arch,
        "fusion": cfg.fusion,
        "heads": str(cfg.heads),
        "width": str(cfg.width),
        "embedding_size": str(cfg.embedding_size),
        "input": "RGB 112x112, (x - 127.5) / 127.5, NCHW",
        "output": "kappa, the embedding before L2 normalisation",
    }
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, partial)
    onnx.checker.check_model(partial, full_check=True)

    session = ort.InferenceSession(partial, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 3):
        x = torch.rand((batch, 3, 112, 112), generator=gen) * 2 - 1
        with torch.no_grad():
            expected = embedder(x).numpy()
        got = session.run(["embedding"], {"input": x.numpy()})[0]
        if got.shape != expected.shape:
            sys.exit(f"onnxruntime gave shape {got.shape} for batch {batch}, PyTorch {expected.shape}")
        # Relative to the embedding's scale: kappa's norm grows with training.
        scale = max(float(np.abs(expected).max()), 1e-6)
        worst = max(worst, float(np.abs(got - expected).max()) / scale)
    if not worst <= TOLERANCE:
        sys.exit(f"onnxruntime differs from PyTorch by {worst:.2e} of the output's scale (allowed {TOLERANCE}); {partial} is kept for inspection")
    os.replace(partial, args.out)
    graph = proto.graph
    print(
        json.dumps(
            {
                "out": args.out,
                "opset": written,
                "inputs": [i.name for i in graph.input],
                "outputs": [o.name for o in graph.output],
                "nodes": len(graph.node),
                "bytes": os.path.getsize(args.out),
                "max_relative_difference_vs_torch": worst,
            }
        )
    )


if __name__ == "__main__":
    main()
