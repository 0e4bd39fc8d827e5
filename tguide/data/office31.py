"""Office-31 (Saenko et al. 2010) amazon and webcam domains, resized to small RGB squares.

Offline: ``<root>/domains/office31/{amazon,webcam}/<class>/frame_NNNN.jpg``, 31 classes with
the same folder names in both domains (amazon: a 1,000-image subset, 32–33 per class, 300×300;
webcam: all 795 images, 152–752 px squares; dslr is absent).

Every image is converted to RGB and resized to ``size × size`` (default **32×32**, the input of
the benchmark's small networks) with PIL's antialiased bilinear filter after a centre crop to a
square. Classes are numbered in sorted folder-name order, identical for both domains.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tguide.data.roots import dataset_dir
from tguide.errors import DataNotFoundError, TGuideError

DOMAINS = ("amazon", "webcam")
SIZE = 32

__all__ = ["DOMAINS", "SIZE", "load_office31"]


def _square(im: object, size: int) -> np.ndarray:
    from PIL import Image

    assert isinstance(im, Image.Image)
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.uint8)


@lru_cache(maxsize=4)
def _load(folder: str, size: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    from PIL import Image

    base = Path(folder)
    classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    if not classes:
        raise DataNotFoundError(f"Office-31 domain folder {folder!r} has no class folders")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        files = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for f in files:
            with Image.open(f) as im:
                images.append(_square(im, size))
            labels.append(c)
    if not images:
        raise DataNotFoundError(f"Office-31 domain folder {folder!r} has no images")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, size, size)
    return x, torch.tensor(labels, dtype=torch.int64), classes


def load_office31(
    domain: str, root: str | os.PathLike[str] | None = None, size: int = SIZE
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One Office-31 domain: ``(images uint8 (N, 3, size, size), labels int64 (N,), class names)``.

    ``domain`` is ``"amazon"`` or ``"webcam"``. Images are ordered by class, then file name.
    Decoding the 300–752 px JPEGs takes a few seconds; results are cached in-process per
    (folder, size); clone before modifying in place.
    """
    if domain not in DOMAINS:
        raise TGuideError(f"Office-31 domain must be one of {DOMAINS} (dslr is not available offline), got {domain!r}")
    if int(size) < 8:
        raise TGuideError(f"Office-31 image size must be ≥ 8, got {size}")
    folder = dataset_dir("domains/office31", root, required=(domain,)) / domain
    return _load(str(folder), int(size))
