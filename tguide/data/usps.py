"""USPS handwritten digits (Hull 1994) as 28×28 uint8 images, white ink on black like MNIST.

The offline files are ``<root>/usps/usps.bz2`` (7,291 train) and ``usps.t.bz2`` (2,007 test):
LIBSVM text, label 1–10, 256 pixel values in [-1, 1]. They are read with
``torchvision.datasets.USPS(root, train, download=False)``; these bz2 files are recompressed
(their md5 differs from torchvision's), so the download path is only for a *different*
folder (``download=True`` with an empty ``root``) and never against the shared data.

Resizing (16×16 → 28×28), ``mode``:

- ``"pad"`` (default): bilinear, antialiased resize of the 16×16 digit to 20×20, then 4 pixels
  of black padding on each side. MNIST digits sit in a 20×20 box inside 28×28, so this
  keeps stroke width and margins close to MNIST's.
- ``"stretch"``: resize the 16×16 frame straight to 28×28 (USPS digits fill their frame, so
  they come out larger than MNIST digits).

Pixel values: ``uint8 = round(255 · (v + 1) / 2)`` (ink is +1 in the files, so white on black),
ready for :func:`tguide.data.mnist.normalise`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tguide.data.roots import dataset_dir
from tguide.errors import DataNotFoundError, TGuideError

FILES = {True: "usps.bz2", False: "usps.t.bz2"}
MODES = ("pad", "stretch")

__all__ = ["load_usps", "resize_digits", "MODES"]


def resize_digits(images: Tensor, mode: str = "pad") -> Tensor:
    """Float images ``(N, 16, 16)`` in [0, 1] → uint8 ``(N, 28, 28)`` (see the module doc for ``mode``)."""
    if mode not in MODES:
        raise TGuideError(f"USPS resize mode must be one of {MODES}, got {mode!r}")
    x = images.float().unsqueeze(1)  # (N, 1, 16, 16)
    if mode == "pad":
        x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", antialias=True, align_corners=False)
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
    else:
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return (x.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)


@lru_cache(maxsize=8)
def _load(folder: str, train: bool, mode: str, download: bool) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import USPS

    try:
        ds = USPS(folder, train=train, download=download)
    except (RuntimeError, OSError) as err:
        raise DataNotFoundError(f"could not read USPS from {folder!r}: {err}") from err
    raw = np.asarray(ds.data)  # (N, 16, 16) uint8: torchvision maps [-1, 1] to [0, 255]
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    images = resize_digits(torch.from_numpy(raw.astype(np.float32) / 255.0), mode)
    return images, labels


def load_usps(
    root: str | Path | None = None, train: bool = True, mode: str = "pad", download: bool = False
) -> tuple[Tensor, Tensor]:
    """USPS ``train`` (7,291) or test (2,007) split: uint8 images ``(N, 28, 28)``, labels ``(N,)`` 0–9.

    Args:
        root: data root (default ``$TGUIDE_DATA``); files are read from ``<root>/usps``.
        train: the training split (``usps.bz2``) or the test split (``usps.t.bz2``).
        mode: ``"pad"`` (20×20 digit in a 28×28 frame, like MNIST) or ``"stretch"``.
        download: let torchvision download into ``<root>/usps`` when the file is missing
            (needs a network; never used against the shared offline folder, whose md5 differs).
    """
    if mode not in MODES:
        raise TGuideError(f"USPS resize mode must be one of {MODES}, got {mode!r}")
    if download:
        from tguide.data.roots import data_root

        folder = data_root(root) / "usps"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = dataset_dir("usps", root, required=(FILES[train],))
    images, labels = _load(str(folder), bool(train), mode, bool(download))
    return images.clone(), labels.clone()
