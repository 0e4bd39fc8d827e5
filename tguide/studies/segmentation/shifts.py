"""Graded image shifts for the segmentation transfer study (:mod:`tguide.studies.segmentation.transfer`).

Targets are a dataset, optionally with a graded shift of its images (:func:`graded_shift`,
``kind`` × severity 1–3, applied to shots and test images alike; labels unchanged):

======== ===================================================== ==================
kind     image ``x ∈ [0,1]^{3×H×W}`` → ``x'``                   severity 1 / 2 / 3
======== ===================================================== ==================
contrast ``clip(μ + c(x − μ))^γ``, μ per-channel image mean       c 0.6/0.4/0.25, γ 1.3/1.7/2.2
blur     Gaussian blur, σ in (working-resolution) pixels        σ 1 / 2 / 3
noise    ``clip(x + σ n)``, n ~ N(0, 1) seeded per image          σ 0.04 / 0.08 / 0.16
colour   ``(1 − a) x + a x[[2, 0, 1]]`` (channel rotation)        a 0.3 / 0.6 / 0.9
======== ===================================================== ==================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SHIFTS", "SEVERITIES", "graded_shift"]

SHIFTS = ("none", "contrast", "blur", "noise", "colour")
SEVERITIES: dict[str, tuple[Any, ...]] = {
    "contrast": ((0.6, 1.3), (0.4, 1.7), (0.25, 2.2)),  # (contrast factor c, gamma γ)
    "blur": (1.0, 2.0, 3.0),  # Gaussian σ (pixels)
    "noise": (0.04, 0.08, 0.16),  # noise σ on the [0, 1] scale
    "colour": (0.3, 0.6, 0.9),  # channel-rotation weight a
}


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # horizontal
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # vertical
    return y[0]


def graded_shift(kind: str, severity: int, seed: int = 0) -> Callable[[Tensor, int], Tensor]:
    """``f(image (3, H, W) in [0, 1], index) -> shifted image`` for ``kind`` in :data:`SHIFTS` at
    ``severity`` 1–3 (table in the module docstring); ``"none"`` is the identity. Noise depends on
    ``seed`` and the image index only, so a shifted image is the same wherever it is read."""
    if kind not in SHIFTS:
        raise ValueError(f"`shift` must be one of {list(SHIFTS)}, got {kind!r}.")
    if kind == "none":
        return lambda image, index: image
    if severity not in (1, 2, 3):
        raise ValueError(f"`severity` must be 1, 2 or 3, got {severity!r}.")
    level = SEVERITIES[kind][severity - 1]

    def shift(image: Tensor, index: int) -> Tensor:
        if kind == "contrast":
            c, gamma = level
            mean = image.mean(dim=(1, 2), keepdim=True)
            return (mean + c * (image - mean)).clamp(0, 1) ** gamma
        if kind == "blur":
            return _gaussian_blur(image, float(level))
        if kind == "noise":
            gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(index))
            return (image + level * torch.randn(image.shape, generator=gen, dtype=image.dtype)).clamp(0, 1)
        return (1 - level) * image + level * image[[2, 0, 1]]  # colour

    return shift
