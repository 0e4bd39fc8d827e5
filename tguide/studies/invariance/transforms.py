r"""Nuisance transformation families for invariance studies (Zhou, Tajwar & Finn, ICLR 2022).

A *family* is a one-parameter set of image transformations :math:`T_t` (``t`` a scalar per
image): the nuisance :math:`T(\cdot\mid x)` of the paper is ``apply(x, t)`` with ``t`` drawn per
example from the family's range. Every ``apply`` is differentiable in ``t`` (so that a learned
generative model can output ``t``, :mod:`tguide.studies.invariance.git`) and works on a batch of
pixel-space images ``x (B, C, H, W)`` with values in ``[0, 1]`` (ink 1, background 0 for MNIST).

========== ============================================ ===================== ====================
family     :math:`T_t(x)`                               ``t``                 default range
========== ============================================ ===================== ====================
rotation   rotate by ``t`` degrees about the centre      degrees               [-90, 90]
           (bilinear; borders filled with the image's
           minimum)
scale      zoom by ``exp(t)`` about the centre           log factor            [log .55, log 1.2]
background :math:`t + (1-t)x` for ``t ≥ 0``; the inverse  background intensity  [0, 0.8]
           map :math:`(x+t)/(1+t)` (clamped) for ``t<0``
dilation   grey dilation by a (2r+1)² square for          radius ``r``          {-1, 0, 1}
           ``r > 0``, erosion for ``r < 0``; fractional   (negative = erosion)  (integers)
           ``r`` interpolates the two nearest radii
========== ============================================ ===================== ====================

Parameters are drawn with a caller-owned :class:`torch.Generator`, so a transformed data set is
the same on every run with the same seed (:func:`sample_params`, :func:`random_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Family",
    "FAMILIES",
    "family",
    "sample_params",
    "apply_transform",
    "random_transform",
    "rotate",
    "rescale",
    "background",
    "dilate",
]


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`x` must be a (B, C, H, W) image tensor, got {shape}; add a channel axis with x[:, None].")
    if not x.is_floating_point():
        raise ValueError(f"`x` must be floating point in [0, 1] (pixel space), got {x.dtype}; use x.float() / 255.")


def _per_image(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as a ``(B,)`` tensor on ``x``'s device and dtype (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"`t` must hold one parameter per image: shape ({x.shape[0]},), got {tuple(t.shape)}.")
    return t


def _affine(x: Tensor, matrix: Tensor) -> Tensor:
    """Resample ``x`` at ``matrix (B, 2, 2)`` × output coordinates (normalised, about the centre);
    outside the image the per-image minimum is used (the background)."""
    theta = torch.cat([matrix, torch.zeros(x.shape[0], 2, 1, dtype=x.dtype, device=x.device)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    floor = x.detach().amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - floor, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + floor


def rotate(x: Tensor, degrees: Tensor | float) -> Tensor:
    """Rotate each image of ``x (B, C, H, W)`` by ``degrees (B,)`` (counter-clockwise)."""
    _check_images(x)
    a = torch.deg2rad(_per_image(degrees, x))
    cos, sin = torch.cos(a), torch.sin(a)
    # output pixel p samples the input at R(-a) p
    matrix = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    return _affine(x, matrix)


def rescale(x: Tensor, log_factor: Tensor | float) -> Tensor:
    """Zoom each image by ``exp(log_factor) (B,)`` about its centre (> 0 enlarges)."""
    _check_images(x)
    inv = torch.exp(-_per_image(log_factor, x))
    zero = torch.zeros_like(inv)
    matrix = torch.stack([torch.stack([inv, zero], 1), torch.stack([zero, inv], 1)], 1)
    return _affine(x, matrix)


def background(x: Tensor, intensity: Tensor | float) -> Tensor:
    """Lift the background to ``intensity`` keeping ink at 1: :math:`t + (1 - t) x` for ``t ≥ 0``;
    for ``t < 0`` the inverse map :math:`(x + t) / (1 + t)` clamped to ``[0, 1]`` (darkens it)."""
    _check_images(x)
    t = _per_image(intensity, x).clamp(-0.99, 0.99).view(-1, 1, 1, 1)
    up = t + (1 - t) * x
    down = ((x + t) / (1 + t)).clamp(0.0, 1.0)
    return torch.where(t >= 0, up, down)


def _morph(x: Tensor, r: int) -> Tensor:
    if r == 0:
        return x
    k = 2 * abs(r) + 1
    if r > 0:
        return F.max_pool2d(x, k, stride=1, padding=abs(r))
    return -F.max_pool2d(-x, k, stride=1, padding=abs(r))


def dilate(x: Tensor, radius: Tensor | float) -> Tensor:
    """Grey dilation (``radius > 0``) or erosion (``< 0``) by a ``(2|r|+1)²`` square; a fractional
    radius linearly interpolates the two nearest integer radii (differentiable in ``radius``)."""
    _check_images(x)
    r = _per_image(radius, x)
    lo = torch.floor(r.detach())
    frac = (r - lo).view(-1, 1, 1, 1)
    radii = list(range(int(lo.min()), int(lo.max()) + 2))
    stack = torch.stack([_morph(x, k) for k in radii])  # (K, B, C, H, W)
    pick = torch.arange(x.shape[0], device=x.device)
    base = (lo - radii[0]).long().to(x.device)
    return (1 - frac) * stack[base, pick] + frac * stack[base + 1, pick]


@dataclass(frozen=True)
class Family:
    """A nuisance family: ``apply(x, t)`` and the range that ``t`` is drawn from.

    ``low``/``high`` bound ``t``; ``discrete`` families draw integers in ``[low, high]``.
    ``span`` is the largest *relative* change a generative model may output (``high - low``).
    """

    name: str
    apply: Callable[[Tensor, Tensor | float], Tensor]  # (x, t) -> T_t(x); t per image (B,) or one scalar
    low: float
    high: float
    discrete: bool = False

    @property
    def span(self) -> float:
        return float(self.high - self.low)

    def with_range(self, low: float | None = None, high: float | None = None) -> Family:
        """The same family drawn from another range (``None`` keeps the default)."""
        lo = self.low if low is None else float(low)
        hi = self.high if high is None else float(high)
        if not hi > lo:
            raise ValueError(f"{self.name}: the range must have high > low, got [{lo}, {hi}].")
        return Family(self.name, self.apply, lo, hi, self.discrete)


FAMILIES: dict[str, Family] = {
    "rotation": Family("rotation", rotate, -90.0, 90.0),
    "scale": Family("scale", rescale, math.log(0.55), math.log(1.2)),
    "background": Family("background", background, 0.0, 0.8),
    "dilation": Family("dilation", dilate, -1.0, 1.0, discrete=True),
}


def family(name: str | Family, low: float | None = None, high: float | None = None) -> Family:
    """The family called ``name`` (optionally with another range); ``ValueError`` lists the names."""
    if isinstance(name, Family):
        fam = name
    elif name in FAMILIES:
        fam = FAMILIES[name]
    else:
        raise ValueError(f"unknown nuisance family {name!r}; choose one of {', '.join(FAMILIES)}.")
    return fam if low is None and high is None else fam.with_range(low, high)


def sample_params(fam: str | Family, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` parameters ``(n,)`` float32 drawn uniformly from the family's range (integers when
    the family is discrete), with ``generator``."""
    fam = family(fam)
    if n < 0:
        raise ValueError(f"`n` must be ≥ 0, got {n}.")
    if fam.discrete:
        return torch.randint(int(fam.low), int(fam.high) + 1, (n,), generator=generator).float()
    return fam.low + (fam.high - fam.low) * torch.rand(n, generator=generator)


def apply_transform(fam: str | Family, x: Tensor, t: Tensor | float) -> Tensor:
    """``T_t(x)`` for images ``x (B, C, H, W)`` in ``[0, 1]`` and parameters ``t (B,)``."""
    return family(fam).apply(x, t)


def random_transform(fam: str | Family, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(T_t(x), t)`` with a fresh ``t`` per image drawn by :func:`sample_params`."""
    fam = family(fam)
    t = sample_params(fam, x.shape[0], generator).to(x.device)
    return fam.apply(x, t), t
