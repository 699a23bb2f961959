#!/usr/bin/env python3
"""Exports a PyTorch LGAF model, an input batch and the outputs the Rust model must match.

    export_reference.py --out DIR --arch r18 --fusion lgf --width 0.25 --heads 4 \
        --seed 0 --batch 4 --classes 10

writes into DIR:

- ``weights.safetensors``: the full state dict (``num_batches_tracked`` included), with
  BatchNorm affine parameters and running statistics, PReLU slopes and the LGF buffers
  randomised so that eval mode is not trivial (running statistics are first calibrated on
  random images, then perturbed; the LGF buffers are set around the batch's own norms in
  both modes, so no attention weight is clipped);
- ``input.safetensors``: ``images`` [B, 3, 112, 112] f32, ``labels`` [B] i64, ``centres``
  [classes, D] f32;
- ``expected.safetensors``: ``eval_kappa`` and ``eval_gamma`` (lgf only) from eval mode;
  then from one training step of a copy of the model (forward in train mode, CosFace
  s=64 m3=0.4 through ``PartialFCSingle``, backward): ``train_kappa``, ``train_gamma``
  (lgf), ``train_loss`` [1], ``train_norm_mean`` / ``train_norm_std`` (lgf; the buffers
  after the EMA update), ``grad_conv1_weight``, ``grad_fc_weight`` (when the global branch
  exists) and ``grad_centres``;
- ``config.json``: the model configuration.

With ``--load-weights FILE`` the model's state is read from FILE (strictly: every name and
shape must match) instead of being initialised and randomised; this proves that weights
saved by the Rust model load into PyTorch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# The twin lives with the `lgaf` binary, which embeds it for `lgaf export --format onnx`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "worker", "python"))
from lgaf_torch import LGAF, CombinedMargin, LgfConfig, ModelConfig, PartialFCSingle  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--arch", default="r18", choices=["r18", "r34", "r50", "r100", "r200"])
    p.add_argument("--fusion", default="lgf", choices=["lgf", "add", "local", "global"])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernels", default="1,3,5", help="comma-separated odd kernel sizes")
    p.add_argument("--mid-channels", type=int, default=None)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lgf-h", type=float, default=0.333)
    p.add_argument("--lgf-alpha", type=float, default=0.01)
    p.add_argument("--norm-grad", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--load-weights", default=None, help="read the model's state from this safetensors file")
    return p.parse_args(argv)


def config_of(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        arch=args.arch,
        fusion=args.fusion,
        width=args.width,
        embedding_size=args.embedding_size,
        heads=args.heads,
        kernels=tuple(int(k) for k in args.kernels.split(",")),
        mid_channels=args.mid_channels,
        dropout=args.dropout,
        lgf=LgfConfig(h=args.lgf_h, alpha=args.lgf_alpha, norm_grad=args.norm_grad),
    )


def batch_norms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def randomise(model: LGAF, gen: torch.Generator, images: torch.Tensor) -> None:
    """Non-trivial BatchNorm, PReLU and LGF state (see the module docstring)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if name != "features":  # insightface freezes features.weight at 1
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.45 + 0.05)

    # Calibrate the running statistics on random images (cumulative average), so eval-mode
    # activations stay in range, then perturb them.
    lgf_state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("lgf.")}
    bns = batch_norms(model)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(4):
        model(torch.rand((16, 3, 112, 112), generator=gen) * 2 - 1)
    for bn in bns:
        bn.momentum = 0.1
        std = bn.running_var.sqrt()
        bn.running_mean.add_(torch.randn(std.shape, generator=gen) * 0.1 * std)
        bn.running_var.mul_(torch.exp(torch.randn(std.shape, generator=gen) * 0.2))
        bn.num_batches_tracked.fill_(int(torch.randint(1, 100_000, (1,), generator=gen)))
    model.load_state_dict(lgf_state, strict=False)

    if model.cfg.fusion == "lgf":
        # Centre the LGF statistics between this batch's eval-mode and train-mode norms, with
        # a spread that keeps every normalised norm of both modes inside the clipping range
        # (|h * (Z - mean) / std| <= 0.8), so neither mode's attention weights are clipped.
        norms = []
        for net in (model.eval(), copy.deepcopy(model).train()):
            c = net.feature_map(images)
            norms.append(torch.stack([net.mhms(c).norm(dim=1), net.gfe(c).norm(dim=1)], 1).double())
        norms = torch.cat(norms)
        lo, hi = norms.min(0).values, norms.max(0).values
        mean = (lo + hi) / 2 + (hi - lo) * 0.1 * torch.randn(2, generator=gen, dtype=torch.float64)
        spread = torch.maximum((norms - mean).abs().max(0).values, 0.05 * mean.abs())
        std = model.cfg.lgf.h * spread / 0.8 * (1 + 0.2 * torch.rand(2, generator=gen, dtype=torch.float64))
        model.lgf.norm_mean.copy_(mean.float())
        model.lgf.norm_std.copy_(std.float())


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = config_of(args)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    images = torch.rand((args.batch, 3, 112, 112), generator=gen) * 2 - 1
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen, dtype=torch.int64)
    centres = torch.randn((args.classes, cfg.embedding_size), generator=gen)

    model = LGAF(cfg)
    if args.load_weights:
        state = load_file(args.load_weights)
        model.load_state_dict(state, strict=True)
    else:
        randomise(model, gen, images)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, "weights.safetensors"))
    save_file(
        {"images": images.contiguous(), "labels": labels, "centres": centres.contiguous()},
        os.path.join(args.out, "input.safetensors"),
    )

    expected = {}
    model.eval()
    with torch.no_grad():
        kappa, gamma = model(images)
    expected["eval_kappa"] = kappa
    if gamma is not None:
        expected["eval_gamma"] = gamma

    trained = copy.deepcopy(model).train()
    pfc = PartialFCSingle(args.classes, cfg.embedding_size, CombinedMargin.cosface())
    with torch.no_grad():
        pfc.weight.copy_(centres)
    kappa, gamma = trained(images)
    loss = pfc(kappa, labels)
    loss.backward()
    expected["train_kappa"] = kappa.detach()
    expected["train_loss"] = loss.detach().reshape(1)
    if gamma is not None:
        expected["train_gamma"] = gamma.detach()
        expected["train_norm_mean"] = trained.lgf.norm_mean.clone()
        expected["train_norm_std"] = trained.lgf.norm_std.clone()
    expected["grad_conv1_weight"] = trained.conv1.weight.grad
    if cfg.has_global:
        expected["grad_fc_weight"] = trained.fc.weight.grad
    expected["grad_centres"] = pfc.weight.grad
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(args.out, "expected.safetensors"))

    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    print(f"wrote {args.out}: loss {loss.item():.6f}" + (f", eval gamma {expected['eval_gamma'].tolist()}" if gamma is not None else ""))


if __name__ == "__main__":
    main()
