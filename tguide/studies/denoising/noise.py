r"""Synthetic noise models for denoising, seedable, applied on the fly.

(Noise2Noise, Patil 2022, denoising transferability.)

Images are float tensors in [0, 1] of shape ``(..., C, H, W)``. Every model draws from an
explicit :class:`torch.Generator`, so a run is reproducible from its seed.

============  ==================  ==============================================================
kind          level               model (x clean in [0, 1], y noisy)
============  ==================  ==============================================================
gaussian      σ on the 0-255      :math:`y = x + (\sigma/255)\,n,\; n \sim \mathcal N(0, 1)` (no clipping
              scale               unless ``clip=True``): mean x, variance :math:`(\sigma/255)^2`
poisson       λ (photons at       :math:`y = \mathrm{Poisson}(\lambda x)/\lambda`: mean x, variance
              x = 1)              :math:`x/\lambda` (larger λ = less noise), as in Noise2Noise §3.2
bernoulli     p                   multiplicative: each pixel is set to 0 with probability p
impulse       p                   random-valued impulse: each pixel (all channels) is replaced
                                  with probability p by a value uniform in [0, 1] (N2N §3.3)
text          p (coverage)        random strings of random grey level drawn over the image until
                                  a fraction ≈ p of the pixels is covered (N2N §3.3)
============  ==================  ==============================================================

A *noise domain* is written ``"kind:level"`` (``"gaussian:25"``, ``"poisson:30"``,
``"impulse:0.2"``); :func:`parse_noise` turns it into a :class:`NoiseModel`.

Training pairs (Lehtinen et al., *Noise2Noise: Learning Image Restoration without Clean
Data*, ICML 2018): :func:`n2n_pair` returns two *independent* noisy copies of the same clean
image (input, target); :func:`n2c_pair` returns (noisy, clean) for the Noise2Clean baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tguide.errors import TGuideError

__all__ = [
    "NOISE_KINDS",
    "NoiseModel",
    "parse_noise",
    "gaussian",
    "poisson",
    "bernoulli",
    "impulse",
    "text_overlay",
    "n2n_pair",
    "n2c_pair",
]


def _check(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(
            f"images must be a float tensor in [0, 1], got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')}; convert with x.float() / 255"
        )
    if x.dim() < 3:
        raise ValueError(f"images must have shape (..., C, H, W), got {tuple(x.shape)}")


def gaussian(x: Tensor, sigma: float, generator: torch.Generator | None = None, clip: bool = False) -> Tensor:
    """Additive white Gaussian noise of standard deviation ``sigma``/255: ``x (..., C, H, W)``."""
    _check(x)
    if sigma < 0:
        raise ValueError(f"gaussian sigma must be ≥ 0 (0-255 scale), got {sigma}")
    n = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = x + (float(sigma) / 255.0) * n
    return y.clamp(0, 1) if clip else y


def poisson(x: Tensor, lam: float, generator: torch.Generator | None = None, clip: bool = False) -> Tensor:
    """Poisson (shot) noise: ``Poisson(lam · x) / lam``; mean ``x``, variance ``x / lam``."""
    _check(x)
    if lam <= 0:
        raise ValueError(f"poisson lambda must be > 0 (photons at intensity 1), got {lam}")
    rate = x.clamp(min=0) * float(lam)
    y = torch.poisson(rate, generator=generator) / float(lam)
    return y.clamp(0, 1) if clip else y


def _pixel_mask(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """A Bernoulli(p) mask of shape ``(..., 1, H, W)`` shared by the channels of a pixel."""
    if not 0 <= p <= 1:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    shape = (*x.shape[:-3], 1, *x.shape[-2:])
    return torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device) < p


def bernoulli(x: Tensor, p: float, generator: torch.Generator | None = None, clip: bool = False) -> Tensor:
    """Multiplicative Bernoulli noise: each pixel is zeroed with probability ``p``."""
    _check(x)
    return x.masked_fill(_pixel_mask(x, p, generator), 0.0)


def impulse(x: Tensor, p: float, generator: torch.Generator | None = None, clip: bool = False) -> Tensor:
    """Random-valued impulse noise: each pixel is replaced, with probability ``p``, by U[0, 1]."""
    _check(x)
    mask = _pixel_mask(x, p, generator)
    values = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.where(mask, values, x)


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _text_mask(h: int, w: int, p: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw random strings until ≈ p of an ``h × w`` canvas is covered; returns (mask, grey values)."""
    from PIL import Image, ImageDraw, ImageFont

    def r(n: int) -> int:
        return int(torch.randint(0, max(n, 1), (1,), generator=generator))

    canvas = Image.new("L", (w, h), 0)  # 0 = untouched; k = drawn by string k (1..255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    greys = torch.rand(256, generator=generator)
    for k in range(1, 256):  # at most 255 strings
        covered = (torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8) > 0).float().mean()
        if covered >= p:
            break
        s = "".join(_ALPHABET[r(len(_ALPHABET))] for _ in range(1 + r(10)))
        draw.text((r(w) - w // 8, r(h) - 4), s, fill=k, font=font)
    ids = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).reshape(h, w).long()
    return ids > 0, greys[ids]


def text_overlay(x: Tensor, p: float, generator: torch.Generator | None = None, clip: bool = False) -> Tensor:
    """Random text overlay covering a fraction ≈ ``p`` of each image (grey levels random per string)."""
    _check(x)
    if not 0 <= p < 1:
        raise ValueError(f"text coverage p must be in [0, 1), got {p}")
    flat = x.reshape(-1, *x.shape[-3:])  # (N, C, H, W)
    out = flat.clone()
    for i in range(flat.shape[0]):
        mask, grey = _text_mask(flat.shape[-2], flat.shape[-1], p, generator)
        mask, grey = mask.to(x.device), grey.to(x.device, x.dtype)
        out[i] = torch.where(mask, grey, flat[i])
    return out.reshape(x.shape)


NOISE_KINDS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian,
    "poisson": poisson,
    "bernoulli": bernoulli,
    "impulse": impulse,
    "text": text_overlay,
}


@dataclass(frozen=True)
class NoiseModel:
    """A noise domain: ``kind`` in :data:`NOISE_KINDS` and its ``level`` (σ, λ or p)."""

    kind: str
    level: float
    clip: bool = False

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise TGuideError(f"unknown noise kind {self.kind!r}; choose from {sorted(NOISE_KINDS)}")
        if not math.isfinite(float(self.level)):
            raise TGuideError(f"noise level must be finite, got {self.level}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return NOISE_KINDS[self.kind](x, float(self.level), generator=generator, clip=self.clip)

    @property
    def name(self) -> str:
        """``"kind:level"`` with the level written without a trailing ``.0``."""
        lv = float(self.level)
        return f"{self.kind}:{int(lv) if lv.is_integer() else lv:g}"


def parse_noise(spec: str | NoiseModel | dict) -> NoiseModel:
    """``"gaussian:25"`` / ``{"kind": "gaussian", "level": 25}`` / a NoiseModel → :class:`NoiseModel`."""
    if isinstance(spec, NoiseModel):
        return spec
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        d = dict(spec)
        return NoiseModel(str(d["kind"]), float(d["level"]), bool(d.get("clip", False)))
    kind, sep, level = str(spec).partition(":")
    if not sep:
        raise TGuideError(
            f"noise spec {spec!r} must be 'kind:level', e.g. 'gaussian:25', 'poisson:30', "
            f"'impulse:0.2'; kinds: {sorted(NOISE_KINDS)}"
        )
    try:
        value = float(level)
    except ValueError:
        raise TGuideError(f"noise spec {spec!r}: level {level!r} is not a number") from None
    return NoiseModel(kind.strip(), value)


def n2n_pair(clean: Tensor, noise: NoiseModel, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noise2Noise pair: two independent noisy realisations (input, target) of ``clean``."""
    return noise(clean, generator), noise(clean, generator)


def n2c_pair(clean: Tensor, noise: NoiseModel, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noise2Clean pair: (noisy input, clean target)."""
    return noise(clean, generator), clean
