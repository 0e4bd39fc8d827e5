"""MNIST-M (Ganin & Lempitsky 2015): MNIST digits blended over BSDS500 colour patches, 32×32 RGB.

The offline folder ``<root>/domains/mnist_m/`` holds the first 3,000 test PNGs
(``mnist_m_test/00000000.png`` …) and the original label file ``mnist_m_test_labels.txt``
(9,001 lines ``<file> <label>``). Only the labels of files present are returned.

Image ``i`` of the MNIST-M test set is the coloured version of MNIST *test* image ``i``:
:func:`load_mnist_m` returns those indices (``mnist_index``) so that a transfer from MNIST never
uses the same digit images on both sides (drop them from the source with
:func:`mnist_indices_disjoint_from`).
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

FOLDER = "domains/mnist_m"
IMAGES = "mnist_m_test"
LABELS = "mnist_m_test_labels.txt"

__all__ = ["load_mnist_m", "mnist_indices_disjoint_from", "read_label_file"]


def read_label_file(path: str | Path) -> dict[str, int]:
    """``<file> <label>`` lines → ``{file: label}`` (blank lines skipped; a bad line raises)."""
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise TGuideError(f"{str(path)!r} line {number}: expected '<file> <label>', got {line.strip()!r}")
            out[parts[0]] = int(parts[1])
    return out


@lru_cache(maxsize=2)
def _load(folder: str) -> tuple[Tensor, Tensor, Tensor]:
    from PIL import Image

    base = Path(folder)
    labels = read_label_file(base / LABELS)
    files = sorted((base / IMAGES).glob("*.png"))
    if not files:
        raise DataNotFoundError(f"MNIST-M folder {str(base / IMAGES)!r} has no .png files")
    missing = [f.name for f in files if f.name not in labels]
    if missing:
        raise TGuideError(f"MNIST-M: {len(missing)} images have no label in {LABELS} (e.g. {missing[0]})")
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    y = torch.tensor([labels[f.name] for f in files], dtype=torch.int64)
    index = torch.tensor([int(f.stem) for f in files], dtype=torch.int64)  # = MNIST test index
    return x, y, index


def load_mnist_m(root: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MNIST-M test images present offline: ``(images, labels, mnist_index)``.

    ``images`` uint8 ``(N, 3, 32, 32)``, ``labels`` int64 ``(N,)`` in 0..9, ``mnist_index`` int64
    ``(N,)``: the MNIST test image each one was made from (its file number). Sorted by file name.
    Cached in-process per folder; clone before modifying in place.
    """
    folder = dataset_dir(FOLDER, root, required=(IMAGES, LABELS))
    return _load(str(folder))


def mnist_indices_disjoint_from(used_mnist_m: Tensor, n_mnist: int = 10_000) -> Tensor:
    """MNIST test indices ``0..n_mnist-1`` that are not in ``used_mnist_m`` (MNIST-M file numbers)."""
    keep = torch.ones(n_mnist, dtype=torch.bool)
    keep[used_mnist_m[(used_mnist_m >= 0) & (used_mnist_m < n_mnist)]] = False
    return torch.nonzero(keep).flatten()
