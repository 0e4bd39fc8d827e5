"""The one :class:`Target` type: a labelled set of images, its parts, and reading an image folder into it.

A :class:`Target` is a labelled set of images (file paths, decoded when read, or PIL images) with
its class names, one stable key per sample (the feature-cache key) and, where the target defines
them, fixed ``train`` / ``val`` / ``test`` parts (:attr:`Target.parts`). :func:`open_image` is the
one image opener; :func:`image_folder_target` reads ``<root>/<class>/<image>`` or
``<root>/{train,val,test}/<class>/<image>`` (every problem is one line, :class:`TargetError`).
The named targets and :func:`~tguide.data.targets.load_target` are :mod:`tguide.data.targets`,
which re-exports these names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tguide.data.splits import SPLITS
from tguide.errors import TGuideError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Target",
    "TargetDataset",
    "TargetError",
    "has_split_folders",
    "image_folder_target",
    "open_image",
    "scan_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class TargetError(TGuideError):
    """A target that cannot be read (unknown name, missing or empty folder, one class, unreadable image)."""


def open_image(item: Any) -> Any:
    """A decoded PIL image from a path (or the image itself, passed through); :class:`TargetError`
    naming an unreadable file. The mode is kept (the candidate's transform converts it)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(item, (str, os.PathLike)):
        return item
    try:
        with Image.open(item) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise TargetError(
            f"cannot read image {str(item)!r}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'not an image'}"
        ) from None


@dataclass(eq=False)
class Target:
    """A labelled target set.

    Attributes:
        items: one entry per sample: a file path (``str``, decoded when read) or a PIL image.
        labels: ``(N,)`` int64 class ids 0..C-1.
        classes: class names (``classes[labels[i]]``).
        name: the target name or folder.
        keys: one stable string per sample (relative path, or ``name:index``): the cache key.
        description: how the target and its parts were made (part of the parts' identity).
        parts: the fixed ``train`` / ``val`` / ``test`` parts, where the target defines them.

    Iterating gives ``(item, label)`` pairs with ``int`` labels.
    """

    items: list[Any]
    labels: Tensor
    classes: tuple[str, ...]
    name: str
    keys: list[str] = field(default_factory=list)
    description: str = ""
    parts: dict[str, Target] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        self.classes = tuple(self.classes)
        if not self.keys:
            self.keys = [f"{self.name}:{i}" for i in range(len(self.items))]
        if not (len(self.items) == len(self.labels) == len(self.keys)):
            raise ValueError(
                f"Target {self.name!r}: items ({len(self.items)}), labels ({len(self.labels)}) and "
                f"keys ({len(self.keys)}) must have one entry per sample"
            )
        unknown = set(self.parts) - set(SPLITS)
        if unknown:
            raise ValueError(f"Target {self.name!r}: parts must be named {SPLITS}, got {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return iter(zip(self.items, self.labels.tolist()))

    def __repr__(self) -> str:
        return (
            f"Target({self.name!r}, {len(self)} samples, {len(self.classes)} classes"
            + (f", parts {self.sizes}" if self.parts else "")
            + ")"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sizes(self) -> dict[str, int]:
        """Samples per part (``train``, ``val``, ``test`` order; the parts the target has)."""
        return {s: len(self.parts[s]) for s in SPLITS if s in self.parts}

    def split(self, which: str) -> Target:
        """The fixed part ``which`` (``"train"``, ``"val"`` or ``"test"``)."""
        if which not in SPLITS:
            raise TargetError(f"split must be 'train', 'val' or 'test', got {which!r}")
        if which not in self.parts:
            have = ", ".join(self.parts) or "none"
            raise TargetError(
                f"target {self.name!r} has no fixed {which!r} part (parts: {have}); split it with "
                "tguide.data.targets.stratified_split(target.labels, fractions, seed)"
            )
        return self.parts[which]

    @property
    def train(self) -> Target:
        return self.split("train")

    @property
    def val(self) -> Target:
        return self.split("val")

    @property
    def test(self) -> Target:
        return self.split("test")

    def image(self, i: int) -> Any:
        return open_image(self.items[i])

    def subset(self, index: Sequence[int] | Tensor, name: str | None = None) -> Target:
        """The samples ``index`` (in that order), without parts."""
        idx = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
        return Target(
            [self.items[i] for i in idx],
            self.labels[idx],
            self.classes,
            self.name if name is None else name,
            [self.keys[i] for i in idx],
            self.description,
        )

    def digest(self) -> str:
        """sha256 of the sample keys and labels (which samples, in which order)."""
        h = hashlib.sha256()
        for key, y in zip(self.keys, self.labels.tolist()):
            h.update(f"{key}\t{y}\n".encode())
        return h.hexdigest()

    def dataset(self, transform: Callable[[Any], Tensor]) -> TargetDataset:
        return TargetDataset(self, transform)


class TargetDataset(Dataset):
    """``(transform(image), label)`` pairs of a :class:`Target`; ``targets`` holds the labels."""

    def __init__(self, data: Target, transform: Callable[[Any], Tensor]) -> None:
        self.data, self.transform = data, transform
        self.targets = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.data.image(i)), self.data.labels[i]


# -- image folders ----------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def scan_image_folder(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None, name: str | None = None
) -> Target:
    """Paths and labels of ``<root>/<class>/<images>`` (images are not decoded here).

    ``classes`` fixes the class list (for val/test folders of a split layout); ``name`` names the
    target (default the folder). Keys are the paths relative to ``root``. Raises
    :class:`TargetError` for a missing folder, no class sub-folders, no images, or a single class.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise TargetError(f"image folder {str(base.resolve())!r} does not exist")
    names = tuple(classes) if classes is not None else tuple(d.name for d in _class_dirs(base))
    if not names:
        loose = _images_in(base)
        raise TargetError(
            f"image folder {str(base)!r} has no class sub-folders"
            + (
                f" (found {len(loose)} loose images; put each class in its own sub-folder)"
                if loose
                else " and no images; expected <root>/<class>/<image>"
            )
        )
    items: list[Path] = []
    labels: list[int] = []
    for c, cname in enumerate(names):
        files = _images_in(base / cname) if (base / cname).is_dir() else []
        items += files
        labels += [c] * len(files)
    if not items:
        raise TargetError(
            f"image folder {str(base)!r} has class folders but no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    present = sorted(set(labels))
    if len(present) < 2:
        raise TargetError(
            f"image folder {str(base)!r} has images of one class only ({names[present[0]]!r}); "
            "a target task needs at least two classes"
        )
    return Target(
        [str(p) for p in items],
        torch.tensor(labels, dtype=torch.int64),
        names,
        str(base) if name is None else name,
        [str(p.relative_to(base)) for p in items],
    )


def has_split_folders(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds ``train/`` and a ``val/`` or ``test/`` folder."""
    base = Path(root).expanduser()
    return (base / "train").is_dir() and any((base / s).is_dir() for s in ("val", "test"))


def image_folder_target(root: str | os.PathLike[str], name: str | None = None) -> Target:
    """An image folder as a :class:`Target`: with split folders, the ``train`` folder with every
    split folder as a part (classes from ``train/``); otherwise the whole folder, without parts."""
    base = Path(root).expanduser()
    name = str(base) if name is None else name
    if not has_split_folders(base):
        return scan_image_folder(base, name=name)
    classes = [d.name for d in _class_dirs(base / "train")]
    parts = {s: scan_image_folder(base / s, classes, name=f"{name}/{s}") for s in SPLITS if (base / s).is_dir()}
    train = parts["train"]
    return Target(
        train.items,
        train.labels,
        train.classes,
        name,
        train.keys,
        f"image folder {name} (split folders {', '.join(parts)})",
        parts,
    )


# -- the named targets (the zoo benchmark's protocol: see the module docstring) ----------------
