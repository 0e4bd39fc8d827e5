"""Input transforms: a PIL image of any mode → a model's normalised input tensor.

One module for every reader of images: the zoo checkpoints (:func:`tguide.select.zoo.zoo_transform`),
the other candidate sources (torchvision, timm, tguide checkpoints) and the image-folder data module
all build their transform here, so a grey, palette or RGBA image is handled the same way
everywhere.

:class:`InputSpec` says what a model reads: ``(channels, size, size)`` float, ``(x − mean) / std`` on
[0, 1] pixels, and how the image is brought to ``size × size`` (``"stretch"``, ``"crop"`` or
``"pad"``). :func:`input_transform` turns a spec into a torchvision ``Compose``:
``ConvertMode → resize → ToTensor → Normalize``. The steps are picklable classes with stable,
informative ``repr`` strings, because a transform's ``repr`` is part of the feature-cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tguide.errors import TGuideError

__all__ = ["RESIZE_POLICIES", "ConvertMode", "InputSpec", "PadResize", "input_transform", "plain_transform"]

RESIZE_POLICIES = ("stretch", "crop", "pad")


class ConvertMode:
    """PIL image → ``mode`` (``"L"`` or ``"RGB"``).

    Grey → RGB repeats the grey level, RGB → grey uses PIL's ITU-R 601-2 luma
    (``L = 0.299 R + 0.587 G + 0.114 B``), a palette image is looked up, alpha is dropped (not
    composited). An image already in ``mode`` (or an object without a ``mode``) passes through.
    A class, not a lambda, so DataLoader workers can pickle it.
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise TGuideError(f"ConvertMode mode must be 'L' or 'RGB', got {mode!r}")
        self.mode = mode

    def __call__(self, im: Any) -> Any:
        return im if getattr(im, "mode", self.mode) == self.mode else im.convert(self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


class PadResize:
    """Resize so the longer side is ``inner`` (aspect ratio kept, bilinear), then centre the image on
    a black ``size × size`` canvas: MNIST's layout of a 20×20 digit box in a 28×28 frame
    (LeCun et al., Proc. IEEE 1998) for ``inner=20, size=28``.

    The resized image is ``max(1, round(w · s)) × max(1, round(h · s))`` with
    ``s = inner / max(w, h)`` (``round``: half to even), pasted at ``((size − w') // 2, (size − h') // 2)``.
    """

    def __init__(self, inner: int, size: int) -> None:
        if not 0 < int(inner) <= int(size):
            raise TGuideError(f"PadResize needs 0 < inner <= size, got inner={inner}, size={size}")
        self.inner, self.size = int(inner), int(size)

    def __call__(self, im: Any) -> Any:
        from PIL import Image

        w, h = im.size
        scale = self.inner / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        canvas = Image.new(im.mode, (self.size, self.size), 0)
        canvas.paste(im, ((self.size - nw) // 2, (self.size - nh) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"PadResize(inner={self.inner}, size={self.size})"


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: ``(channels, size, size)`` float, ``(x − mean) / std`` on [0, 1] pixels.

    ``resize`` is the default policy of :func:`input_transform`: ``"stretch"`` (resize to
    ``size × size``, ignoring the aspect ratio), ``"crop"`` (shorter side to
    ``round(size / crop_pct)``, then a centre ``size × size`` crop: the ImageNet evaluation
    protocol, e.g. 256 → 224 for ``crop_pct = 0.875``) or ``"pad"`` (longer side to ``inner``,
    keeping the aspect ratio, then black padding to ``size × size``: MNIST digits sit in a
    20×20 box inside 28×28).
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "stretch"
    inner: int | None = None
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise TGuideError(f"InputSpec.channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_POLICIES:
            raise TGuideError(f"InputSpec.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise TGuideError("InputSpec.mean and std need one value per channel")
        if not 0.0 < self.crop_pct <= 1.0:
            raise TGuideError(f"InputSpec.crop_pct must be in (0, 1], got {self.crop_pct}")


def input_transform(spec: InputSpec, resize: str | None = None) -> Callable[[Any], Tensor]:
    """A torchvision transform: PIL image (any mode: ``1``, ``L``, ``RGB``, ``RGBA``, ``P``, ...) →
    the normalised input ``(spec.channels, spec.size, spec.size)`` float tensor.

    The image is converted to the spec's channel count (:class:`ConvertMode`), resized by
    ``resize`` (default ``spec.resize``; see :class:`InputSpec`) with antialiased bilinear
    filtering, scaled to [0, 1] and normalised. No colour inversion is done: MNIST models expect
    a light digit on a dark background.
    """
    from torchvision import transforms as T

    policy = spec.resize if resize is None else resize
    if policy not in RESIZE_POLICIES:
        raise TGuideError(f"resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    bilinear = T.InterpolationMode.BILINEAR
    steps: list[Callable[[Any], Any]] = [ConvertMode("L" if spec.channels == 1 else "RGB")]
    if policy == "stretch":
        steps.append(T.Resize((spec.size, spec.size), interpolation=bilinear, antialias=True))
    elif policy == "crop":
        short = int(round(spec.size / spec.crop_pct))
        steps += [T.Resize(short, interpolation=bilinear, antialias=True), T.CenterCrop(spec.size)]
    else:
        steps.append(PadResize(spec.inner or spec.size, spec.size))
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


def plain_transform(
    channels: int, size: int, mean: tuple[float, ...], std: tuple[float, ...], crop: bool = False
) -> Callable[[Any], Tensor]:
    """:func:`input_transform` for a model known only by its size and normalisation.

    ``crop=False`` stretches to ``size × size``; ``crop=True`` is the ImageNet evaluation
    protocol: shorter side to ``int(size · 256 / 224)``, then a centre ``size × size`` crop.
    """
    if crop:  # crop_pct chosen so that round(size / crop_pct) is exactly int(size * 256 / 224)
        spec = InputSpec(size, channels, tuple(mean), tuple(std), "crop", crop_pct=size / int(size * 256 / 224))
    else:
        spec = InputSpec(size, channels, tuple(mean), tuple(std), "stretch")
    return input_transform(spec)
