"""One image as a regression data set for implicit neural representations (SIREN image fitting).

Inputs are the pixel-centre coordinates on a grid spanning :math:`[-1, 1]^2` (``(H*W, 2)``,
``(y, x)`` order, row-major), targets are the pixel values scaled to :math:`[-1, 1]`
(``(H*W, C)``, ``v = 2 u / 255 - 1`` for uint8 ``u``). The whole image is one batch.
Images come from :func:`tguide.data.cifar10.load_cifar10` (the offline 3,000-image JPEG copy
of the CIFAR-10 test set) or from a tensor passed directly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["coordinate_grid", "image_to_pixels", "pixels_to_image", "ImageFitDataModule"]


def coordinate_grid(height: int, width: int) -> Tensor:
    """Coordinates ``(height*width, 2)`` float32 in ``[-1, 1]``: ``linspace(-1, 1)`` per axis, row-major."""
    if int(height) < 2 or int(width) < 2:
        raise ValueError(f"the image must be at least 2×2, got {height}×{width}")
    ys = torch.linspace(-1.0, 1.0, int(height))
    xs = torch.linspace(-1.0, 1.0, int(width))
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def image_to_pixels(image: Tensor) -> Tensor:
    """uint8 ``(C, H, W)`` (or float in [0, 1]) → float32 ``(H*W, C)`` in ``[-1, 1]``.

    A batch ``(N, C, H, W)`` gives ``(N, H*W, C)``.
    """
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if not torch.isfinite(x).all():
        raise ValueError("image contains NaN or Inf")
    x = x * 2.0 - 1.0
    return x.flatten(-2).transpose(-1, -2).contiguous()


def pixels_to_image(pixels: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`image_to_pixels`: ``(..., H*W, C)`` in [-1, 1] → ``(..., C, H, W)`` in [0, 1] (clamped)."""
    x = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return x.transpose(-1, -2).reshape(*pixels.shape[:-2], pixels.shape[-1], int(height), int(width))


class _WholeImage(Dataset):
    """A data set of one item: ``(coords (P, 2), pixels (P, C))``."""

    def __init__(self, coords: Tensor, pixels: Tensor) -> None:
        self.coords, self.pixels = coords, pixels

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.coords, self.pixels


class ImageFitDataModule(L.LightningDataModule):
    """One image's ``(coords (P, 2), pixels (P, 3))`` as a single batch, for train, val and test.

    Args:
        index: which CIFAR-10 image (0..2999, ordered by class then file; see ``load_cifar10``).
        root: data root (``None`` = ``$TGUIDE_DATA``).
        image: a ``(C, H, W)`` uint8/float tensor to fit instead of a CIFAR-10 image.
    """

    def __init__(self, index: int = 0, root: str | None = None, image: Tensor | None = None) -> None:
        super().__init__()
        self.index, self.root, self.image = int(index), root, image
        self.coords: Tensor | None = None
        self.pixels: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.coords is not None:
            return
        img = self.image
        if img is None:
            from tguide.data.cifar10 import load_cifar10

            images, _, _ = load_cifar10(self.root)
            if not 0 <= self.index < images.shape[0]:
                raise ValueError(f"index must be in 0..{images.shape[0] - 1}, got {self.index}")
            img = images[self.index]
        if img.dim() != 3:
            raise ValueError(f"image must be (C, H, W), got shape {tuple(img.shape)}")
        self.coords = coordinate_grid(img.shape[1], img.shape[2])
        self.pixels = image_to_pixels(img)

    def _loader(self) -> DataLoader[Any]:
        self.setup()
        assert self.coords is not None and self.pixels is not None, "setup() sets both"
        return DataLoader(_WholeImage(self.coords, self.pixels), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader()

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader()

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader()
