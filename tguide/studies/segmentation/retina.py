"""Retinal vessel segmentation data: DRIVE and CHASE_DB1, read from the files as they are.

Every image becomes ``(image, label)``: ``image (3, H, W)`` float32 RGB in ``[0, 1]`` and
``label (H, W)`` int64 with 0 = background, 1 = vessel (first observer) and
:data:`IGNORE` = 255 outside the field of view (FOV) and in padding, so that one tensor
carries both the annotation and the FOV and every loss/metric/sampler skips label 255.

Splits (fixed, by file id):

- DRIVE (``seg/DRIVE``, 565×584): the official training ids 21–40 give ``train`` = 21–36
  and ``val`` = 37–40 (4 held out); ``test`` = the official test ids 01–20. FOV = the
  provided ``mask/*.gif``.
- CHASE_DB1 (``seg/CHASEDB1``, 999×960): no official split; the common one: ``01L``–``10R``
  for training, of which patients 09 and 10 (``09L 09R 10L 10R``, both eyes of a child kept
  together) are ``val`` and ``01L``–``08R`` (16) ``train``; ``test`` = ``11L``–``14R`` (8).
  **CHASE_DB1 has no FOV masks: the FOV here is the red channel > 20 (of 255)**; 0.15% of the
  first observer's vessel pixels fall outside it (see tests/data/test_retina.py).

``downscale=f`` shrinks images by area averaging (``F.interpolate(mode="area")`` on an integer
factor, sizes floored) and labels by the same average thresholded at 0.5 (a pixel is vessel /
inside the FOV when at least half of its f×f block is), so that CPU runs are affordable;
metrics at ``downscale > 1`` are on the reduced grid, not comparable with published
full-resolution numbers. Training reads random ``patch_size`` crops (centre inside the FOV,
random flips); evaluation reads whole images padded with label 255 to a multiple of
``pad_multiple`` (32 for a U-Net of depth ≤ 5).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tguide.data.roots import dataset_dir

__all__ = [
    "IGNORE",
    "DATASETS",
    "SPLITS",
    "load_retina",
    "downscale_pair",
    "pad_to_multiple",
    "RetinaPatches",
    "RetinaImages",
    "EpochSampler",
    "RetinaDataModule",
]

IGNORE = 255
DATASETS = ("drive", "chasedb1")
CHASE_RED_THRESHOLD = 20  # FOV of CHASE_DB1 = red channel > this (0-255)

_CHASE = [f"{i:02d}{s}" for i in range(1, 15) for s in "LR"]
SPLITS: dict[str, dict[str, list[str]]] = {
    "drive": {
        "train": [f"{i:02d}" for i in range(21, 37)],
        "val": [f"{i:02d}" for i in range(37, 41)],
        "test": [f"{i:02d}" for i in range(1, 21)],
    },
    "chasedb1": {"train": _CHASE[:16], "val": _CHASE[16:20], "test": _CHASE[20:]},
}
Transform = Callable[[Tensor, int], Tensor]  # (image (3, H, W), index) -> image


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def _drive_files(root, split: str, ident: str) -> tuple:
    folder = dataset_dir("seg/DRIVE", root)
    part, kind = ("test", "test") if split == "test" else ("training", "training")
    return (
        folder / part / "images" / f"{ident}_{kind}.tif",
        folder / part / "1st_manual" / f"{ident}_manual1.gif",
        folder / part / "mask" / f"{ident}_{kind}_mask.gif",
    )


def _load_one(name: str, root, split: str, ident: str) -> tuple[Tensor, Tensor]:
    if name == "drive":
        img_p, ves_p, fov_p = _drive_files(root, split, ident)
        paths = [img_p, ves_p, fov_p]
    else:
        folder = dataset_dir("seg/CHASEDB1", root)
        img_p, ves_p = folder / f"Image_{ident}.jpg", folder / f"Image_{ident}_1stHO.png"
        paths = [img_p, ves_p]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        from tguide.errors import DataNotFoundError

        raise DataNotFoundError(f"{name}: missing file(s) {', '.join(missing)}; the dataset folder is incomplete.")
    rgb = _read(img_p)[..., :3]  # (H, W, 3) uint8
    vessel = _read(ves_p) > 0
    fov = _read(fov_p) > 0 if name == "drive" else rgb[..., 0] > CHASE_RED_THRESHOLD
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    label = torch.from_numpy(vessel.astype(np.int64))
    label[~torch.from_numpy(fov)] = IGNORE
    return image, label


def downscale_pair(image: Tensor, label: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Shrink ``image (3, H, W)`` and ``label (H, W)`` by an integer ``factor`` (area average;
    labels: vessel / FOV where ≥ half of the block is). ``factor=1`` returns the inputs."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"`downscale` must be an integer ≥ 1, got {factor!r}.")
    if factor == 1:
        return image, label
    h, w = image.shape[-2] // factor, image.shape[-1] // factor
    img = F.interpolate(image[None, :, : h * factor, : w * factor], size=(h, w), mode="area")[0]
    lab = label[: h * factor, : w * factor]
    fov = F.interpolate((lab != IGNORE).float()[None, None], size=(h, w), mode="area")[0, 0] >= 0.5
    ves = F.interpolate((lab == 1).float()[None, None], size=(h, w), mode="area")[0, 0] >= 0.5
    out = ves.to(torch.int64)
    out[~fov] = IGNORE
    return img, out


@functools.lru_cache(maxsize=8)
def _cached(name: str, root: str | None, split: str, downscale: int) -> tuple[tuple[Tensor, Tensor], ...]:
    return tuple(downscale_pair(*_load_one(name, root, split, i), downscale) for i in SPLITS[name][split])


def load_retina(name: str, split: str, root: str | None = None, downscale: int = 1) -> list[tuple[Tensor, Tensor]]:
    """``[(image (3, H, W) in [0, 1], label (H, W) in {0, 1, 255}), ...]`` of a split, in id order
    (:data:`SPLITS`). Decoded once per process (cached); the tensors are shared, do not modify them."""
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {name!r}.")
    if split not in ("train", "val", "test"):
        raise ValueError(f"`split` must be 'train', 'val' or 'test', got {split!r}.")
    if not isinstance(downscale, int) or downscale < 1:
        raise ValueError(f"`downscale` must be an integer ≥ 1, got {downscale!r}.")
    return list(_cached(name, None if root is None else str(root), split, downscale))


def pad_to_multiple(image: Tensor, label: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Pad ``image (C, H, W)`` with zeros and ``label (H, W)`` with :data:`IGNORE` at the bottom/right
    so that H and W are multiples of ``multiple``."""
    h, w = label.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, label
    return F.pad(image, (0, pw, 0, ph)), F.pad(label, (0, pw, 0, ph), value=IGNORE)


class RetinaImages(Dataset):
    """Whole images ``(image (3, H', W'), label (H', W'))`` padded to ``pad_multiple``;
    ``transform(image, index)`` (e.g. a graded shift) is applied before padding."""

    def __init__(
        self, pairs: Sequence[tuple[Tensor, Tensor]], pad_multiple: int = 32, transform: Transform | None = None
    ) -> None:
        self.pairs, self.pad_multiple, self.transform = list(pairs), pad_multiple, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label = self.pairs[i]
        if self.transform is not None:
            image = self.transform(image, i)
        return pad_to_multiple(image, label, self.pad_multiple)


class RetinaPatches(Dataset):
    """``length`` random ``(patch (3, p, p), label (p, p))`` crops with random flips.

    Crop ``i`` is drawn with a ``torch.Generator`` seeded by ``seed`` and ``i``; any integer
    ``i ≥ 0`` is a valid index (the datamodule's :class:`EpochSampler` reads indices
    ``epoch·length + j``), so runs are reproducible, epochs differ, and worker processes agree.
    The crop centre lies inside the FOV; images smaller than the
    patch are padded with label 255.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Tensor, Tensor]],
        patch_size: int = 96,
        length: int = 256,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("RetinaPatches needs at least one (image, label) pair.")
        if patch_size < 8:
            raise ValueError(f"`patch_size` must be ≥ 8, got {patch_size}.")
        self.pairs, self.patch, self.length, self.seed, self.transform = (
            list(pairs),
            patch_size,
            length,
            seed,
            transform,
        )
        self._centres = [torch.nonzero(lab != IGNORE) for _, lab in self.pairs]  # (n_fov, 2) each

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_000_007 + int(i)) % (2**62))
        k = int(torch.randint(len(self.pairs), (1,), generator=gen))
        image, label = self.pairs[k]
        if self.transform is not None:
            image = self.transform(image, k)
        p, half = self.patch, self.patch // 2
        centres = self._centres[k]
        r, c = centres[int(torch.randint(len(centres), (1,), generator=gen))].tolist()
        image = F.pad(image, (half, half, half, half))
        label = F.pad(label, (half, half, half, half), value=IGNORE)
        x, y = image[:, r : r + p, c : c + p], label[r : r + p, c : c + p]  # centre (r, c) in padded coords
        flips = torch.rand(2, generator=gen)
        if flips[0] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if flips[1] < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        return x.contiguous(), y.contiguous()


class EpochSampler(Sampler[int]):
    """Indices ``epoch·length + j`` for ``j < length``; Lightning calls :meth:`set_epoch` every epoch."""

    def __init__(self, length: int) -> None:
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))


class RetinaDataModule(L.LightningDataModule):
    """DRIVE or CHASE_DB1 (``dataset``): random patches for training, whole images for val/test.

    Args:
        dataset: ``"drive"`` or ``"chasedb1"`` (splits in :data:`SPLITS`).
        root: data root (``None`` = ``$TGUIDE_DATA``).
        downscale: integer shrink factor (2 halves both sides; see the module docstring).
        patch_size: training crop side; patches_per_epoch: crops per training epoch.
        batch_size: training batch; eval_batch_size: whole images per val/test batch.
        pad_multiple: whole images are padded to a multiple of this.
        train_ids: use only these training ids (few-shot), default the whole train split.
        seed: seeds the crops; num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: str = "drive",
        root: str | None = None,
        downscale: int = 2,
        patch_size: int = 96,
        patches_per_epoch: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 2,
        pad_multiple: int = 32,
        train_ids: Sequence[str] | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}.")
        if train_ids is not None:
            unknown = sorted(set(train_ids) - set(SPLITS[dataset]["train"]))
            if unknown:
                raise ValueError(f"`train_ids` {unknown} are not {dataset} training ids {SPLITS[dataset]['train']}.")
        self.dataset, self.root, self.downscale = dataset, root, downscale
        self.patch_size, self.patches_per_epoch = patch_size, patches_per_epoch
        self.batch_size, self.eval_batch_size, self.pad_multiple = batch_size, eval_batch_size, pad_multiple
        self.train_ids = None if train_ids is None else list(train_ids)
        self.seed, self.num_workers = seed, num_workers
        self.train_set: RetinaPatches | None = None
        self.sets: dict[str, RetinaImages] = {}

    def pairs(self, split: str) -> list[tuple[Tensor, Tensor]]:
        pairs = load_retina(self.dataset, split, self.root, self.downscale)
        if split == "train" and self.train_ids is not None:
            ids = SPLITS[self.dataset]["train"]
            pairs = [pairs[ids.index(i)] for i in self.train_ids]
        return pairs

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = RetinaPatches(self.pairs("train"), self.patch_size, self.patches_per_epoch, self.seed)
        for split in ("train", "val", "test"):
            if split not in self.sets and (stage in (None, "fit", "validate") or split == "test"):
                self.sets[split] = RetinaImages(self.pairs(split), self.pad_multiple)

    def _eval_loader(self, split: str) -> DataLoader:
        if split not in self.sets:
            self.sets[split] = RetinaImages(self.pairs(split), self.pad_multiple)
        return DataLoader(
            self.sets[split], batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train_set)),
            num_workers=self.num_workers,
        )

    def train_images_dataloader(self) -> DataLoader:
        """Whole training images (e.g. the source side of OTCE in a TransferabilityMonitor)."""
        return self._eval_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
