"""MCUNet (Lin et al., NeurIPS 2020) and ProxylessNAS-Mobile (Cai et al., ICLR 2019) in the
MIT HAN Lab state-dict layout: a stem, a list of MBConv blocks given by a block table, an
optional feature-mix layer, global average pooling and a linear classifier.

Layout: ``first_conv`` (3×3 stride-2 conv, padding 1 → BN → ReLU6; its width is the first
block's input width) → ``blocks.0 … blocks.N-1`` → [``feature_mix_layer`` (1×1 conv → BN →
ReLU6), ProxylessNAS only] → ``global_avg_pool`` → ``flatten`` → ``classifier.linear``
(→ 1000 ImageNet logits; the only layer with a bias).

Each block (:class:`MBConvBlock`) holds ``mobile_inverted_conv`` (:class:`MBInvertedConv`):
``inverted_bottleneck`` (1×1 expand conv → BN → ReLU6; absent when the expand ratio is 1, where
the depthwise conv has the input's width) → ``depth_conv`` (k×k depthwise, stride s, symmetric
padding k//2 → BN → ReLU6) → ``point_linear`` (1×1 projection → BN, no activation); the input
is added back only where the table says ``+res``. A zero block (``Z``, :class:`ZeroBlock`)
passes its input through, holds no weights and keeps its index in ``blocks``. No SE, no
dropout at evaluation. BatchNorm eps is 1e-5 for MCUNet and 1e-3 for ProxylessNAS.

The block tables are written in the notation of ``shared/models/README.md`` ("ImageNet sub-zoo"),
which copies HAN Lab's published net configurations: ``i: in→out kK sS eE [mid M] [+res]`` or
``i: Z``; :func:`parse_blocks` reads them.

``model.STAGES`` (the "auto" layers): the last non-zero block of each resolution (strides 4,
8, 16, and 32 only when a feature-mix layer follows it; otherwise its pooled output is the
penultimate feature itself), then ``global_avg_pool`` (penultimate features: 160-d for
MCUNet-in2/in3, 320-d / 384-d for ProxylessNAS ×0.25 / ×0.3).

Input: RGB in [0, 1], then (x − 0.5) / 0.5; 160 px (MCUNet-in2), 176 px (MCUNet-in3,
ProxylessNAS ×0.3), 112 px (ProxylessNAS ×0.25).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = [
    "BLOCK_TABLES",
    "HANLAB_NETS",
    "BlockSpec",
    "HanLabNet",
    "MBConvBlock",
    "MBInvertedConv",
    "ZeroBlock",
    "hanlab_layers",
    "hanlab_net",
    "parse_blocks",
]


@dataclass(frozen=True)
class BlockSpec:
    """One row of a block table: ``None`` fields never occur; a zero block is ``None`` in the list."""

    c_in: int
    c_out: int
    kernel: int
    stride: int
    expand: int
    mid: int
    residual: bool


BLOCK_TABLES: dict[str, str] = {
    "mcunet-in3": (
        "0: 16→8 k3 s1 e1; 1: 8→16 k7 s2 e3 mid 24; 2: 16→16 k3 s1 e5 mid 80 +res; 3: 16→16 k7 s1 e5 mid 80 +res; "
        "4: 16→16 k5 s1 e4 mid 64 +res; 5: 16→24 k5 s2 e5 mid 80; 6: 24→24 k5 s1 e5 mid 120 +res; "
        "7: 24→24 k5 s1 e5 mid 120 +res; 8: 24→40 k3 s2 e5 mid 120; 9: 40→40 k7 s1 e6 mid 240 +res; "
        "10: 40→40 k5 s1 e4 mid 160 +res; 11: 40→48 k5 s1 e5 mid 200; 12: 48→48 k7 s1 e5 mid 240 +res; "
        "13: 48→48 k3 s1 e5 mid 240 +res; 14: 48→96 k3 s2 e6 mid 288; 15: 96→96 k7 s1 e5 mid 480 +res; "
        "16: 96→96 k3 s1 e4 mid 384 +res; 17: 96→160 k7 s1 e5 mid 480."
    ),
    "mcunet-in2": (
        "0: 16→8 k3 s1 e1; 1: 8→16 k5 s2 e3 mid 24; 2: 16→16 k7 s1 e6 mid 96 +res; 3: 16→16 k3 s1 e5 mid 80 +res; "
        "4: 16→16 k5 s1 e5 mid 80 +res; 5: 16→24 k3 s2 e5 mid 80; 6: 24→24 k7 s1 e6 mid 144 +res; "
        "7: 24→24 k5 s1 e6 mid 144 +res; 8: 24→40 k7 s2 e4 mid 96; 9: 40→40 k5 s1 e5 mid 200 +res; "
        "10: 40→48 k3 s1 e5 mid 200; 11: 48→48 k5 s1 e5 mid 240 +res; 12: 48→48 k3 s1 e4 mid 192 +res; "
        "13: 48→96 k5 s2 e6 mid 288; 14: 96→96 k5 s1 e4 mid 384 +res; 15: 96→96 k5 s1 e3 mid 288 +res; "
        "16: 96→96 k3 s1 e4 mid 384 +res; 17: 96→160 k5 s1 e5 mid 480."
    ),
    "proxyless-w0.25": (
        "0: 8→8 k3 s1 e1; 1: 8→8 k5 s2 e3 mid 24; 2: 8→8 k3 s1 e3 mid 24 +res; 3: Z; 4: Z; "
        "5: 8→16 k7 s2 e3 mid 24; 6: 16→16 k3 s1 e3 mid 48 +res; 7: 16→16 k5 s1 e3 mid 48 +res; "
        "8: 16→16 k5 s1 e3 mid 48 +res; 9: 16→24 k7 s2 e6 mid 96; 10: 24→24 k5 s1 e3 mid 72 +res; "
        "11: 24→24 k5 s1 e3 mid 72 +res; 12: 24→24 k5 s1 e3 mid 72 +res; 13: 24→24 k5 s1 e6 mid 144; "
        "14: 24→24 k5 s1 e3 mid 72 +res; 15: 24→24 k5 s1 e3 mid 72 +res; 16: 24→24 k5 s1 e3 mid 72 +res; "
        "17: 24→48 k7 s2 e6 mid 144; 18: 48→48 k7 s1 e6 mid 288 +res; 19: 48→48 k7 s1 e3 mid 144 +res; "
        "20: 48→48 k7 s1 e3 mid 144 +res; 21: 48→80 k7 s1 e6 mid 288."
    ),
    "proxyless-w0.3": (
        "0: 16→8 k3 s1 e1; 1: 8→16 k5 s2 e3 mid 24; 2: 16→16 k3 s1 e3 mid 48 +res; 3: Z; 4: Z; "
        "5: 16→16 k7 s2 e3 mid 48; 6: 16→16 k3 s1 e3 mid 48 +res; 7: 16→16 k5 s1 e3 mid 48 +res; "
        "8: 16→16 k5 s1 e3 mid 48 +res; 9: 16→24 k7 s2 e6 mid 96; 10: 24→24 k5 s1 e3 mid 72 +res; "
        "11: 24→24 k5 s1 e3 mid 72 +res; 12: 24→24 k5 s1 e3 mid 72 +res; 13: 24→32 k5 s1 e6 mid 144; "
        "14: 32→32 k5 s1 e3 mid 96 +res; 15: 32→32 k5 s1 e3 mid 96 +res; 16: 32→32 k5 s1 e3 mid 96 +res; "
        "17: 32→64 k7 s2 e6 mid 192; 18: 64→64 k7 s1 e6 mid 384 +res; 19: 64→64 k7 s1 e3 mid 192 +res; "
        "20: 64→64 k7 s1 e3 mid 192 +res; 21: 64→96 k7 s1 e6 mid 384."
    ),
}

# name -> (block table, feature-mix width or None, BN eps, native resolution)
HANLAB_NETS: dict[str, tuple[str, int | None, float, int]] = {
    "mcunet-in2": ("mcunet-in2", None, 1e-5, 160),
    "mcunet-in3": ("mcunet-in3", None, 1e-5, 176),
    "proxyless-w0.25": ("proxyless-w0.25", 320, 1e-3, 112),
    "proxyless-w0.3": ("proxyless-w0.3", 384, 1e-3, 176),
}

_ROW = re.compile(r"^(\d+): (?:(Z)|(\d+)→(\d+) k(\d+) s(\d+) e(\d+)(?: mid (\d+))?( \+res)?)$")


def parse_blocks(table: str) -> list[BlockSpec | None]:
    """Parse ``"0: 16→8 k3 s1 e1; 1: 8→16 k7 s2 e3 mid 24; 3: Z; …"`` into one entry per block
    (``None`` for a zero block). Without ``mid`` the mid width is ``in × expand``. ``ValueError``
    on a malformed row, an index out of order, or ``mid ≠ in × expand``."""
    out: list[BlockSpec | None] = []
    for raw in table.strip().rstrip(".").split(";"):
        m = _ROW.match(raw.strip())
        if m is None:
            raise ValueError(
                f"malformed block row {raw.strip()!r}; expected 'i: in→out kK sS eE [mid M] [+res]' or 'i: Z'"
            )
        if int(m.group(1)) != len(out):
            raise ValueError(f"block row {raw.strip()!r} out of order: expected index {len(out)}")
        if m.group(2):
            out.append(None)
            continue
        c_in, c_out, k, s, e = (int(m.group(i)) for i in range(3, 8))
        mid = int(m.group(8)) if m.group(8) else c_in * e
        if mid != c_in * e:
            raise ValueError(f"block row {raw.strip()!r}: mid {mid} is not in × expand = {c_in * e}")
        if m.group(9) and (s != 1 or c_in != c_out):
            raise ValueError(f"block row {raw.strip()!r}: a residual needs stride 1 and in == out")
        out.append(BlockSpec(c_in, c_out, k, s, e, mid, bool(m.group(9))))
    return out


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int, eps: float, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """``conv`` (no bias, padding k//2) → ``bn`` [→ ``act`` ReLU6]: HAN Lab's ``ConvLayer`` names."""
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)),
        ("bn", nn.BatchNorm2d(c_out, eps=eps)),
    ]
    if act:
        layers.append(("act", nn.ReLU6(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class MBInvertedConv(nn.Module):
    """[``inverted_bottleneck`` 1×1 → BN → ReLU6] → ``depth_conv`` k×k depthwise → BN → ReLU6 →
    ``point_linear`` 1×1 → BN."""

    def __init__(self, spec: BlockSpec, eps: float) -> None:
        super().__init__()
        mid = spec.mid
        self.inverted_bottleneck: nn.Module | None = None
        if spec.expand != 1:
            self.inverted_bottleneck = _conv_bn(spec.c_in, mid, 1, 1, eps)
        else:
            mid = spec.c_in
        self.depth_conv = _conv_bn(mid, mid, spec.kernel, spec.stride, eps, groups=mid)
        self.point_linear = _conv_bn(mid, spec.c_out, 1, 1, eps, act=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class MBConvBlock(nn.Module):
    """One table row: ``mobile_inverted_conv(x)`` (+ ``x`` when the row says ``+res``)."""

    def __init__(self, spec: BlockSpec, eps: float) -> None:
        super().__init__()
        self.spec = spec
        self.mobile_inverted_conv = MBInvertedConv(spec, eps)
        self.residual = spec.residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.mobile_inverted_conv(x)
        return out + x if self.residual else out


class ZeroBlock(nn.Module):
    """A zero block of the NAS search space: the block is skipped, its input passes through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class HanLabNet(nn.Module):
    """Stem → MBConv blocks → [feature mix] → pool → ``classifier.linear``; see the module docstring.

    Args:
        blocks: the block table (:func:`parse_blocks`; ``None`` = zero block).
        feature_mix: width of the 1×1 feature-mix layer before pooling (ProxylessNAS), or ``None``.
        bn_eps: eps of every BatchNorm (1e-5 MCUNet, 1e-3 ProxylessNAS).
        num_classes: outputs of the classifier.
        resolution: the native input size (informative).
    """

    def __init__(
        self,
        blocks: list[BlockSpec | None],
        feature_mix: int | None = None,
        bn_eps: float = 1e-5,
        num_classes: int = 1000,
        resolution: int = 224,
    ) -> None:
        super().__init__()
        real = [b for b in blocks if b is not None]
        if not real:
            raise ValueError("a HAN Lab net needs at least one non-zero block")
        for prev, nxt in zip(real, real[1:]):
            if prev.c_out != nxt.c_in:
                raise ValueError(f"block table does not chain: {prev.c_out} channels out, then {nxt.c_in} in")
        self.num_classes, self.resolution = num_classes, resolution
        self.first_conv = _conv_bn(3, real[0].c_in, 3, 2, bn_eps)
        self.blocks = nn.ModuleList([ZeroBlock() if b is None else MBConvBlock(b, bn_eps) for b in blocks])
        c_last = real[-1].c_out
        self.feature_mix_layer: nn.Module | None = None
        if feature_mix is not None:
            self.feature_mix_layer = _conv_bn(c_last, feature_mix, 1, 1, bn_eps)
            c_last = feature_mix
        self.num_features = c_last
        self.global_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(OrderedDict([("linear", nn.Linear(c_last, num_classes))]))
        self.STAGES: tuple[str, ...] = self._stage_ends(blocks, feature_mix is not None) + ("global_avg_pool",)

    @staticmethod
    def _stage_ends(blocks: list[BlockSpec | None], mixed: bool) -> tuple[str, ...]:
        """The last non-zero block before each stride-2 block after the first (strides 4, 8, 16), and
        the last block when a feature-mix layer follows it."""
        ends: list[str] = []
        last: int | None = None
        seen_stride = False
        for i, b in enumerate(blocks):
            if b is None:
                continue
            if b.stride == 2:
                if seen_stride and last is not None:
                    ends.append(f"blocks.{last}")
                seen_stride = True
            last = i
        if mixed and last is not None:
            ends.append(f"blocks.{last}")
        return tuple(ends)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last map before pooling ``(B, num_features, H/32, W/32)``."""
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        return x

    def embed(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(B, num_features)``."""
        return self.flatten(self.global_avg_pool(self.forward_features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def hanlab_net(name: str, num_classes: int = 1000) -> HanLabNet:
    """``hanlab_net("mcunet-in2")`` (or ``"mcunet-in3"``, ``"proxyless-w0.25"``, ``"proxyless-w0.3"``): untrained."""
    if name not in HANLAB_NETS:
        raise ValueError(f"unknown HAN Lab net {name!r}; choose one of {sorted(HANLAB_NETS)}")
    table, mix, eps, resolution = HANLAB_NETS[name]
    return HanLabNet(parse_blocks(BLOCK_TABLES[table]), mix, eps, num_classes, resolution)


def hanlab_layers(name: str) -> tuple[str, ...]:
    """``hanlab_net(name).STAGES`` without building the model (for registries)."""
    if name not in HANLAB_NETS:
        raise ValueError(f"unknown HAN Lab net {name!r}; choose one of {sorted(HANLAB_NETS)}")
    table, mix, _eps, _res = HANLAB_NETS[name]
    return HanLabNet._stage_ends(parse_blocks(BLOCK_TABLES[table]), mix is not None) + ("global_avg_pool",)
