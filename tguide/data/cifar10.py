"""CIFAR-10 images from the offline JPEG copy: ``<root>/cifar10/test/<class>/NNNN.jpg``.

The shared copy holds the first 300 test images of each of the 10 classes (3,000 in all),
re-encoded as JPEG (quality ≈ 75): good for transfer experiments, not for comparing with
published CIFAR-10 accuracies. ``torchvision.datasets.CIFAR10(download=True)`` stays the path
for users with a network; it is never used against the shared folder.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tguide.data.roots import dataset_dir
from tguide.errors import DataNotFoundError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

__all__ = ["CLASSES", "load_cifar10"]


@lru_cache(maxsize=2)
def _load(folder: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    from PIL import Image

    base = Path(folder)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for c, name in enumerate(CLASSES):
        files = sorted((base / name).glob("*.jpg"))
        if not files:
            raise DataNotFoundError(f"CIFAR-10 class folder {str(base / name)!r} has no .jpg files")
        for f in files:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y, CLASSES


def load_cifar10(
    root: str | os.PathLike[str] | None = None, split: str = "test"
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Return ``(images, labels, class_names)``: uint8 ``(N, 3, 32, 32)``, int64 ``(N,)`` in 0..9.

    Images are ordered by class, then by file name (``0000.jpg`` …), so index ``i`` is stable.
    Only ``split="test"`` exists offline. The tensors are cached per folder; callers must not
    modify them in place (clone first).
    """
    if split != "test":
        raise DataNotFoundError(
            f"CIFAR-10 split {split!r} is not available offline (only 'test', 3,000 JPEG images); "
            "use torchvision.datasets.CIFAR10(download=True) where a network is available"
        )
    folder = dataset_dir("cifar10", root, required=("test",)) / "test"
    return _load(str(folder))
