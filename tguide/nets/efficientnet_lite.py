"""EfficientNet-Lite0/1/2 (Google's TF "lite" variants of Tan & Le 2019) in the lukemelas
EfficientNet-PyTorch state-dict layout.

Lite differs from EfficientNet by: no squeeze-excitation, ReLU6 instead of swish, and stem (32)
and head (1280) channels that are not scaled with the width; the first and last stage keep their
repeats when depth is scaled. Every BatchNorm has eps 1e-3, and every conv uses TensorFlow's
"SAME" padding: total padding ``max((⌈i/s⌉ − 1)·s + k − i, 0)`` per axis, with the extra pixel
(for stride 2 on even sizes) at the bottom/right. :class:`Conv2dSame` computes it from the input
size at run time, so any resolution works.

Stages (repeats, kernel, stride, expand ratio, in → out channels):
(1,3,1,1,32→16), (2,3,2,6,16→24), (2,5,2,6,24→40), (3,3,2,6,40→80), (3,5,1,6,80→112),
(4,5,2,6,112→192), (1,3,1,6,192→320). Widths: :func:`round_filters` (multiple of 8, never more
than 10% below ``width × c``); repeats: ``⌈depth × r⌉`` (:func:`round_repeats`).

Module names: ``_conv_stem`` → ``_bn0`` → ``_stem_act`` → ``_blocks.0 … _blocks.N-1``
(:class:`MBConvBlock`: ``_expand_conv, _bn0`` (absent when the expand ratio is 1),
``_depthwise_conv, _bn1, _project_conv, _bn2``; residual when stride is 1 and in == out) →
``_conv_head`` (1×1, →1280) → ``_bn1`` → ``_head_act`` → ``_avg_pooling`` → ``_flatten`` →
``_dropout`` → ``_fc`` (1280 → 1000 ImageNet logits).

``model.STAGES`` (an instance attribute: block indices depend on the depth) names the
"auto" layers: the last block of each resolution (strides 4, 8, 16, 32) and the pooled
1280-d penultimate features (``_avg_pooling``).

Input: RGB, pixels in 0–255 mapped by (x − 127) / 128, i.e. mean 127/255 and std 128/255 on
[0, 1] input; native resolution 224 / 240 / 260 for Lite0 / 1 / 2.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LITE_PARAMS",
    "STAGE_ARGS",
    "Conv2dSame",
    "EfficientNetLite",
    "MBConvBlock",
    "efficientnet_lite",
    "round_filters",
    "round_repeats",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# (repeats, kernel, stride, expand, c_in, c_out)
STAGE_ARGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# name -> (width, depth, resolution, dropout)
LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """``width × channels`` rounded to the nearest multiple of ``divisor``, at least ``divisor``,
    and bumped by one ``divisor`` if rounding lost more than 10%."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def round_repeats(repeats: int, depth: float) -> int:
    """``⌈depth × repeats⌉``."""
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size (asymmetric:
    the odd pixel goes to the bottom/right). Its parameters are those of ``nn.Conv2d``."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    @staticmethod
    def _same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        top, bottom = self._same(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._same(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual without SE: [1×1 expand → BN → ReLU6] → k×k depthwise → BN → ReLU6 →
    1×1 project → BN (+ x when stride 1 and in == out)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(c_in, mid, 1)
            self._bn0 = _bn(mid)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = self._expand_act(self._bn0(self._expand_conv(out)))
        out = self._depthwise_act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with width/depth multipliers; see the module docstring."""

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        resolution: int = 224,
    ) -> None:
        super().__init__()
        self.width, self.depth, self.resolution = width, depth, resolution
        self.num_classes = num_classes
        stem, head = 32, 1280  # not scaled in the Lite variants
        self._conv_stem = Conv2dSame(3, stem, 3, stride=2)
        self._bn0 = _bn(stem)
        self._stem_act = nn.ReLU6()
        blocks: list[nn.Module] = []
        stage_ends: list[tuple[int, int]] = []  # (last block index, stride of the stage)
        last = len(STAGE_ARGS) - 1
        c_prev = stem
        for i, (r, k, s, e, _c_in, c_out) in enumerate(STAGE_ARGS):
            c_out = round_filters(c_out, width)
            n = r if i in (0, last) else round_repeats(r, depth)
            for j in range(n):
                blocks.append(MBConvBlock(c_prev, c_out, k, s if j == 0 else 1, e))
                c_prev = c_out
            stage_ends.append((len(blocks) - 1, s))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(c_prev, head, 1)
        self._bn1 = _bn(head)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)
        # last block before each stride-2 stage, and the final block: outputs at strides 4, 8, 16, 32
        ends = [idx for (idx, _), (_, s_next) in zip(stage_ends, [*stage_ends[1:], (0, 2)]) if s_next == 2]
        self.STAGES: tuple[str, ...] = tuple(f"_blocks.{i}" for i in ends[1:]) + ("_avg_pooling",)

    def forward_features(self, x: Tensor) -> Tensor:
        """The head map ``(B, 1280, H/32, W/32)`` after ``_head_act``."""
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def embed(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(B, 1280)``."""
        return self._flatten(self._avg_pooling(self.forward_features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self._dropout(self.embed(x)))


def efficientnet_lite(name: str, num_classes: int = 1000) -> EfficientNetLite:
    """``efficientnet_lite("efficientnet-lite0")`` (or ``lite1``, ``lite2``): untrained model."""
    if name not in LITE_PARAMS:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; choose one of {sorted(LITE_PARAMS)}")
    width, depth, resolution, dropout = LITE_PARAMS[name]
    return EfficientNetLite(width, depth, num_classes, dropout, resolution)
