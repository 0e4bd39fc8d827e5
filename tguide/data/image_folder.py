"""A folder of images as a Lightning data module (``recipes/data/image_folder.yaml``).

Layouts (read by :func:`tguide.data.targets.image_folder_target`):

- ``<root>/<class>/*.jpg|png|...``: one sub-folder per class (sorted names = class ids); a seeded,
  class-stratified train/val/test split (:func:`tguide.data.splits.stratified_split`, fractions
  configurable) is drawn;
- ``<root>/{train,val,test}/<class>/...``: ready-made splits, used as they are.

Grey, palette, RGB and RGBA images are accepted and converted. Every problem is one line
(:class:`~tguide.data.targets.TargetError`): a missing or empty folder, a single class, an image
that cannot be decoded (named).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tguide.data.splits import SPLITS, SplitError, stratified_split
from tguide.data.target import Target, TargetError, image_folder_target
from tguide.data.transforms import InputSpec, input_transform

__all__ = ["ImageFolderDataModule"]


class ImageFolderDataModule(L.LightningDataModule):
    """Train/val/test loaders over an image folder (see the module doc for the layouts).

    Args:
        root: the folder.
        batch_size, num_workers: loader settings.
        split: fractions (train, val, test) of the seeded stratified split when the folder has
            no ``train/ val/ test/`` sub-folders.
        seed: seed of that split (and of the training loader's shuffling).
        image_size: images are resized (stretched) to ``image_size × image_size``.
        channels: 1 (grey) or 3 (RGB): every image is converted to it.
        mean, std: per-channel normalisation (default 0.5 / 0.5).
        transform: PIL image → tensor, replacing the resize/convert/normalise above.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        batch_size: int = 64,
        num_workers: int = 0,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        image_size: int = 32,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Callable[[Any], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if root is None or str(root) == "":
            raise TargetError("data.root is not set; pass the image folder, e.g. data.root=/path/to/images")
        if channels not in (1, 3):
            raise TargetError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root).expanduser()
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.fractions, self.seed = tuple(float(f) for f in split), int(seed)
        if len(self.fractions) != 3:
            raise TargetError(f"split must be three fractions (train, val, test), got {list(split)}")
        try:
            stratified_split([0], self.fractions)  # validates the fractions
        except SplitError as err:
            raise TargetError(f"data.split: {err}") from None
        if transform is None:
            mean = tuple(mean) if mean is not None else (0.5,) * channels
            std = tuple(std) if std is not None else (0.5,) * channels
            transform = input_transform(InputSpec(int(image_size), channels, mean, std, "stretch"))
        self.transform = transform
        self.parts: dict[str, Target] = {}
        self.classes: tuple[str, ...] = ()

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        data = image_folder_target(self.root)
        self.classes = data.classes
        if data.parts:
            self.parts = dict(data.parts)
            return
        for name, idx in zip(SPLITS, stratified_split(data.labels, self.fractions, self.seed)):
            self.parts[name] = data.subset(idx, f"{data.name}/{name}")

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        if part not in self.parts or len(self.parts[part]) == 0:
            raise TargetError(f"image folder {str(self.root)!r} has no {part!r} samples")
        return DataLoader(
            self.parts[part].dataset(self.transform),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
