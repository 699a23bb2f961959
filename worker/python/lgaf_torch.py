"""PyTorch twin of the Rust crate `lgaf-model` (LGAF: IResNet + MHMS + GFE + LGF).

Every parameter and buffer has the same name, shape and dtype as in `lgaf-model`, and every
forward pass computes the same maths in the same order, so a state dict moves between the
two unchanged (``crates/model/tests/torch_parity.rs`` checks forward outputs, LGF buffers,
loss and gradients against this file). It is also the PyTorch side of the GPU step
benchmark, so it has no special cases for ``channels_last`` or ``torch.autocast``: the
heads that the Rust model keeps in fp32 (GFE ``fc``, MHMS ``proj``, LGF, the classifier)
disable autocast and cast to float here too.

Layout (spec section 2):

- insightface IResNet names at top level: ``conv1``, ``bn1``, ``prelu``,
  ``layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0,downsample.1}``, ``bn2``,
  and the GFE's ``fc`` and ``features`` (BatchNorm1d, weight frozen at 1);
- MHMS: ``mhms.heads.{i}.branches.{j}.{0,1,2}`` (conv, bn, prelu),
  ``mhms.heads.{i}.lanets.{j}.conv1|conv2``, ``mhms.heads.{i}.se.fc1|fc2``,
  ``mhms.heads.{i}.proj``, ``mhms.heads.{i}.bn``;
- LGF buffers ``lgf.norm_mean`` and ``lgf.norm_std`` ([2], order (local, global)).

``LGAF.forward(x)`` returns ``(kappa, gamma)``; ``gamma`` is ``None`` unless fusion is
``lgf``. The verification embedding is ``F.normalize(kappa)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LAYERS",
    "LgfConfig",
    "ModelConfig",
    "IBasicBlock",
    "MHMS",
    "LGF",
    "LGAF",
    "CombinedMargin",
    "PartialFCSingle",
]

#: Blocks per stage of each IResNet depth (insightface).
LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
FUSIONS = ("lgf", "add", "local", "global")

BN_EPS = 1e-5
#: Side of C(x) for a 112x112 input (four stride-2 stages).
FEATURE_SIDE = 7
#: Channel reduction of the LANet and SE bottlenecks.
REDUCTION = 16
#: Initial LGF EMA mean / std of the norms (lgf.rs INIT_NORM_MEAN / INIT_NORM_STD).
INIT_NORM_MEAN = 20.0
INIT_NORM_STD = 100.0
#: Added to the EMA std before dividing (lgf.rs STD_EPS).
STD_EPS = 1e-3
#: Keeps acos differentiable at |cos| = 1 (margin.rs COS_EPS).
COS_EPS = 1e-7


@dataclass
class LgfConfig:
    """config.rs `LgfConfig`."""

    h: float = 0.333
    alpha: float = 0.01
    norm_grad: bool = False


@dataclass
class ModelConfig:
    """config.rs `ModelConfig` (same fields and defaults)."""

    arch: str = "r100"
    fusion: str = "lgf"
    width: float = 1.0
    embedding_size: int = 512
    heads: int = 4
    kernels: Sequence[int] = (1, 3, 5)
    mid_channels: Optional[int] = None
    dropout: float = 0.0
    lgf: LgfConfig = field(default_factory=LgfConfig)

    def scaled(self, c: int) -> int:
        # Rust's f64::round rounds half away from zero; Python's round() is banker's.
        return max(1, int(math.floor(c * self.width + 0.5)))

    def stem_channels(self) -> int:
        return self.scaled(64)

    def stage_channels(self) -> list[int]:
        return [self.scaled(c) for c in (64, 128, 256, 512)]

    def mid(self) -> int:
        return self.mid_channels if self.mid_channels is not None else self.scaled(128)

    @property
    def has_local(self) -> bool:
        return self.fusion != "global"

    @property
    def has_global(self) -> bool:
        return self.fusion != "local"

    def validate(self) -> None:
        if self.arch not in LAYERS:
            raise ValueError(f"arch: unknown `{self.arch}`")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion: unknown `{self.fusion}`")
        if not 0.0 < self.width <= 4.0:
            raise ValueError(f"width: {self.width} is outside (0, 4]")
        if self.embedding_size <= 0:
            raise ValueError("embedding_size: must be positive")
        if self.has_local:
            if self.heads <= 0 or self.embedding_size % self.heads != 0:
                raise ValueError("heads: must be positive and divide embedding_size")
            if not self.kernels or any(k <= 0 or k % 2 == 0 for k in self.kernels):
                raise ValueError("kernels: need odd positive sizes")
            if self.mid() <= 0:
                raise ValueError("mid_channels: must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout: outside [0, 1)")


def _reduced(c: int) -> int:
    return max(1, c // REDUCTION)


def conv_no_bias(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """layers.rs `conv_no_bias`: bias-free conv, insightface's N(0, 0.1) init."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
    nn.init.normal_(conv.weight, 0.0, 0.1)
    return conv


def batch_norm(kind: str, channels: int) -> nn.Module:
    """layers.rs `BatchNorm`: momentum 0.1, eps 1e-5, weight 1, bias 0."""
    cls = nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d
    return cls(channels, eps=BN_EPS, momentum=0.1)


class IBasicBlock(nn.Module):
    """insightface's IBasicBlock: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN,
    plus a conv1x1(stride)+BN shortcut where the shape changes (iresnet.rs)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = batch_norm("2d", c_in)
        self.conv1 = conv_no_bias(c_in, c_out, 3, 1, 1)
        self.bn2 = batch_norm("2d", c_out)
        self.prelu = nn.PReLU(c_out, init=0.25)
        self.conv2 = conv_no_bias(c_out, c_out, 3, stride, 1)
        self.bn3 = batch_norm("2d", c_out)
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(conv_no_bias(c_in, c_out, 1, stride, 0), batch_norm("2d", c_out))
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class LANet(nn.Module):
    """Spatial attention (LS-CNN): conv1x1(c -> c/16) -> ReLU -> conv1x1(c/16 -> 1) ->
    sigmoid, multiplied into the input. PyTorch default init (with bias)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, _reduced(c), 1)
        self.conv2 = nn.Conv2d(_reduced(c), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(F.relu(self.conv1(x))))


class SE(nn.Module):
    """Squeeze-and-excitation: GAP -> fc(c -> c/16) -> ReLU -> fc(c/16 -> c) -> sigmoid."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Linear(c, _reduced(c))
        self.fc2 = nn.Linear(_reduced(c), c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * w[:, :, None, None]


class MSNet(nn.Module):
    """One MHMS head: per kernel k, conv kxk -> BN -> PReLU -> LANet; concat -> SE ->
    flatten -> proj (fp32) -> BatchNorm1d."""

    def __init__(self, c_in: int, out_dim: int, cfg: ModelConfig):
        super().__init__()
        c_mid = cfg.mid()
        c_cat = c_mid * len(cfg.kernels)
        self.branches = nn.ModuleList(
            nn.Sequential(conv_no_bias(c_in, c_mid, k, 1, k // 2), batch_norm("2d", c_mid), nn.PReLU(c_mid, init=0.25))
            for k in cfg.kernels
        )
        self.lanets = nn.ModuleList(LANet(c_mid) for _ in cfg.kernels)
        self.se = SE(c_cat)
        self.proj = nn.Linear(c_cat * FEATURE_SIDE * FEATURE_SIDE, out_dim)
        self.bn = batch_norm("1d", out_dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        maps = [lanet(branch(c)) for branch, lanet in zip(self.branches, self.lanets)]
        x = torch.flatten(self.se(torch.cat(maps, 1)), 1)
        # The projection and BatchNorm1d stay in fp32 under mixed precision, like the GFE.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.proj(x.float())
        return self.bn(x)


class MHMS(nn.Module):
    """`heads` MSNets; outputs concatenated into the local feature [B, embedding_size]."""

    def __init__(self, c_in: int, cfg: ModelConfig):
        super().__init__()
        out_dim = cfg.embedding_size // cfg.heads
        self.heads = nn.ModuleList(MSNet(c_in, out_dim, cfg) for _ in range(cfg.heads))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(c) for h in self.heads], 1)


class LGF(nn.Module):
    """Norm-based attention fusion (lgf.rs, spec section 2, paper eq. 4-10).

    Buffers ``norm_mean`` / ``norm_std`` ([2], fp32, order (local, global)). In training the
    EMA is updated from this batch (float64 statistics [count, sum_l, sumsq_l, sum_g,
    sumsq_g], unbiased std, std kept when count < 2) *before* the weights are computed.
    World size 1: the statistics all-reduce is the identity.
    """

    def __init__(self, cfg: LgfConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("norm_mean", torch.full((2,), INIT_NORM_MEAN, dtype=torch.float32))
        self.register_buffer("norm_std", torch.full((2,), INIT_NORM_STD, dtype=torch.float32))

    def attention(self, norms: torch.Tensor) -> torch.Tensor:
        """Eq. 6 and 9: norms [B, 2] -> weights [B, 2] summing to 1; (0.5, 0.5) where the
        normalised norms sum to 0."""
        mean = self.norm_mean.detach().unsqueeze(0)
        std = self.norm_std.detach().unsqueeze(0)
        z_hat = ((norms - mean) * self.cfg.h / (std + STD_EPS)).clamp(-1.0, 1.0) + 1.0
        total = z_hat.sum(1, keepdim=True)
        positive = total > 0
        # A safe denominator keeps the unused branch of `where` free of NaN gradients.
        safe_total = torch.where(positive, total, torch.ones_like(total))
        gamma = z_hat / safe_total
        return torch.where(positive, gamma, torch.full_like(gamma, 0.5))

    @torch.no_grad()
    def update_statistics(self, norms: torch.Tensor) -> None:
        """Eq. 7 and 8, computed in float64 like lgf.rs."""
        z = norms.detach().double()
        count = torch.full((1,), float(z.shape[0]), dtype=torch.float64, device=z.device)
        sums = z.sum(0)
        sumsq = z.square().sum(0)
        stats = torch.cat([count, torch.stack([sums[0], sumsq[0], sums[1], sumsq[1]])])
        # (A distributed run all-reduces `stats` here.)
        n = stats[0]
        s = torch.stack([stats[1], stats[3]])
        sq = torch.stack([stats[2], stats[4]])
        mean = s / n
        var = ((sq - n * mean.square()) / (n - 1.0).clamp_min(1.0)).clamp_min(0.0)
        has_spread = n > 1.0
        alpha = self.cfg.alpha
        old_mean = self.norm_mean.double()
        old_std = self.norm_std.double()
        new_mean = mean * alpha + old_mean * (1.0 - alpha)
        new_std = torch.where(has_spread, var.sqrt() * alpha + old_std * (1.0 - alpha), old_std)
        self.norm_mean.copy_(new_mean.float())
        self.norm_std.copy_(new_std.float())

    def forward(self, local: torch.Tensor, glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=local.device.type, enabled=False):
            local = local.float()
            glob = glob.float()
            norms = torch.stack([local.norm(2, dim=1), glob.norm(2, dim=1)], 1)
            if not self.cfg.norm_grad:
                norms = norms.detach()
            if self.training:
                self.update_statistics(norms)
            gamma = self.attention(norms)
            kappa = gamma[:, 0].unsqueeze(1) * local + gamma[:, 1].unsqueeze(1) * glob
        return kappa, gamma


class LGAF(nn.Module):
    """The whole network (model.rs `Lgaf`). With fusion ``global`` it is exactly
    insightface's IResNet."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        stem = cfg.stem_channels()
        channels = cfg.stage_channels()
        self.conv1 = conv_no_bias(3, stem, 3, 1, 1)
        self.bn1 = batch_norm("2d", stem)
        self.prelu = nn.PReLU(stem, init=0.25)
        c_in = stem
        for i, (blocks, c_out) in enumerate(zip(LAYERS[cfg.arch], channels)):
            stage = [IBasicBlock(c_in if b == 0 else c_out, c_out, 2 if b == 0 else 1) for b in range(blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            c_in = c_out
        self.bn2 = batch_norm("2d", channels[3])
        if cfg.has_global:
            # GFE: flatten -> dropout -> fc (fp32) -> features (BatchNorm1d, weight frozen at 1).
            self.dropout = nn.Dropout(p=cfg.dropout)
            self.fc = nn.Linear(channels[3] * FEATURE_SIDE * FEATURE_SIDE, cfg.embedding_size)
            self.features = batch_norm("1d", cfg.embedding_size)
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False
        if cfg.has_local:
            self.mhms = MHMS(channels[3], cfg)
        if cfg.fusion == "lgf":
            self.lgf = LGF(cfg.lgf)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 112, 112] normalised images -> C(x) [B, C, 7, 7] (the output of ``bn2``)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def gfe(self, c: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(c, 1))
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.fc(x.float())
        return self.features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        c = self.feature_map(x)
        glob = self.gfe(c) if self.cfg.has_global else None
        local = self.mhms(c) if self.cfg.has_local else None
        if self.cfg.fusion == "lgf":
            return self.lgf(local, glob)
        if self.cfg.fusion == "add":
            return local.float() + glob, None
        only = local if local is not None else glob
        return only.float(), None


class CombinedMargin:
    """margin.rs: target logit cos(min(m1*theta + m2, pi)) - m3, all logits times ``scale``.

    ArcFace = (1, 0.5, 0), CosFace = (1, 0, 0.4).
    """

    def __init__(self, m1: float = 1.0, m2: float = 0.0, m3: float = 0.4, scale: float = 64.0):
        self.m1, self.m2, self.m3, self.scale = m1, m2, m3, scale

    @classmethod
    def arcface(cls, scale: float = 64.0) -> "CombinedMargin":
        return cls(1.0, 0.5, 0.0, scale)

    @classmethod
    def cosface(cls, scale: float = 64.0) -> "CombinedMargin":
        return cls(1.0, 0.0, 0.4, scale)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        theta = cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS).acos()
        # Capped at pi so the logit stays monotone in theta.
        return (theta * self.m1 + self.m2).clamp_max(math.pi).cos() - self.m3

    def logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``cos`` [B, C] (clamped to [-1, 1]); ``labels`` [B], -1 = target not among the
        columns. The target column gets the margin; everything is scaled."""
        cos = cos.clamp(-1.0, 1.0)
        has_target = labels >= 0
        index = labels.clamp_min(0).unsqueeze(1)
        target = cos.gather(1, index)
        with_margin = torch.where(has_target.unsqueeze(1), self.target_logit(target), target)
        return cos.scatter(1, index, with_margin) * self.scale

    __call__ = logits


class PartialFCSingle(nn.Module):
    """partial_fc.rs `PartialFc` at world size 1 and sample rate 1: a margin softmax
    cross-entropy over all classes, mean over the batch, computed in fp32.

    ``weight`` [num_classes, D] are the class centres (insightface init N(0, 0.01)).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: CombinedMargin):
        super().__init__()
        self.margin = margin
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            labels = labels.long()
            cos = F.normalize(embeddings.float()) @ F.normalize(self.weight.float()).t()
            logits = self.margin.logits(cos, labels)
            return F.cross_entropy(logits, labels)
