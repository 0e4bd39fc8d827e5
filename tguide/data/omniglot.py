"""Omniglot (Lake et al. 2015) background characters from the two "small" zips, 28×28, ink = white.

``<root>/omniglot/images_background_small1.zip`` and ``..._small2.zip`` overlap (Greek and
Latin are in both, byte-identical). Characters are keyed by ``alphabet/characterNN`` (not by
zip) and each drawing by its file name; a drawing present in both zips is read once, and
byte-identical images under one character are kept once. Result: 8 alphabets, 242
characters × 20 drawers = 4,840 images.

Each 105×105 mode-``1`` image (ink 0 on background 1) is inverted (ink = 1), resized to
28×28 with an antialiased (area-like) bilinear filter, and stored as uint8 0–255, white
strokes on black like MNIST. Read with ``zipfile`` + PIL, nothing is unpacked.
``torchvision.datasets.Omniglot`` (download path for users with a network) expects the full
``images_background.zip`` and is not used here.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tguide.data.roots import dataset_dir
from tguide.errors import TGuideError

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
SIZE = 28

__all__ = ["OmniglotSet", "load_omniglot", "ZIPS"]


@dataclass(frozen=True)
class OmniglotSet:
    """Decoded Omniglot characters.

    Attributes:
        images: ``(N, 28, 28)`` uint8, ink 255 on 0.
        labels: ``(N,)`` int64 character index into ``characters``.
        characters: ``alphabet/characterNN`` per class, sorted.
        alphabets: alphabet name per class (same order as ``characters``).
    """

    images: Tensor
    labels: Tensor
    characters: tuple[str, ...]
    alphabets: tuple[str, ...]

    def classes_of(self, alphabets: list[str] | tuple[str, ...]) -> list[int]:
        """Class indices whose alphabet is in ``alphabets`` (unknown names raise, listing the valid ones)."""
        known = sorted(set(self.alphabets))
        bad = [a for a in alphabets if a not in known]
        if bad:
            raise TGuideError(f"unknown Omniglot alphabet(s) {bad}; available: {', '.join(known)}")
        return [i for i, a in enumerate(self.alphabets) if a in set(alphabets)]


def _decode(data: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("L")  # mode 1 → L: ink 0, background 255
    ink = torch.from_numpy(255.0 - np.asarray(img, dtype=np.float32)) / 255.0  # ink = 1
    out = torch.nn.functional.interpolate(
        ink[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return (out[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@lru_cache(maxsize=4)
def _load(folder: str, size: int) -> OmniglotSet:
    drawings: dict[str, dict[str, bytes]] = {}  # "alphabet/characterNN" → {file name: bytes}
    for name in ZIPS:
        with zipfile.ZipFile(Path(folder) / name) as zf:
            for member in zf.namelist():
                parts = member.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue
                key = f"{parts[1]}/{parts[2]}"
                drawings.setdefault(key, {}).setdefault(parts[3], zf.read(member))
    characters = tuple(sorted(drawings))
    images, labels = [], []
    for c, key in enumerate(characters):
        seen: set[str] = set()
        for fname in sorted(drawings[key]):
            data = drawings[key][fname]
            digest = hashlib.sha1(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            images.append(_decode(data, size))
            labels.append(c)
    return OmniglotSet(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(labels, dtype=torch.int64),
        characters=characters,
        alphabets=tuple(k.split("/")[0] for k in characters),
    )


def load_omniglot(root: str | Path | None = None, size: int = SIZE) -> OmniglotSet:
    """Omniglot background (small1 ∪ small2, de-duplicated): 242 characters × 20 images, ``size``².

    Decoding takes a few seconds; the result is cached in-process per (folder, size).
    """
    if size < 8:
        raise TGuideError(f"Omniglot image size must be ≥ 8, got {size}")
    folder = dataset_dir("omniglot", root, required=ZIPS)
    return _load(str(folder), int(size))
