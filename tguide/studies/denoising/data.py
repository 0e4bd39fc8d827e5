"""Denoising data: Train400 random patches with on-the-fly noise; BSD68 / Set12 / Kodak24 evaluation.

Files (``<data root>/denoise/``, see ``../shared/data/README.md``): ``Train400/`` 400 grey
180×180 PNGs (DnCNN's training images), ``BSD68/`` 68 grey 481×321 test images, ``Set12/``
12 grey 256² or 512² test images, ``Kodak24/`` 24 RGB 500×500 crops, converted to grey with
PIL's ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``) when ``grey=True``.

Splits: Train400 images whose 1-based number is a multiple of 20 (20 images) are the
validation set, the other 380 the training set (deterministic, no generator). Evaluation sets
are used whole.

Samples are triples ``(input, target, clean)`` of ``(C, H, W)`` float tensors in [0, 1]:
``mode="n2n"`` draws two independent noisy copies (Noise2Noise), ``mode="n2c"`` a noisy copy
and the clean image (Noise2Clean). Training noise is fresh at every draw (a generator seeded
once per worker); evaluation noise is fixed per image (generator seeded by ``seed`` and the
image index), so every model sees the same noisy test images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from tguide.data.roots import dataset_dir
from tguide.errors import DataNotFoundError, TGuideError
from tguide.studies.denoising.noise import NoiseModel, n2c_pair, n2n_pair, parse_noise

SETS = ("Train400", "BSD68", "Set12", "Kodak24")
EVAL_SETS = ("BSD68", "Set12", "Kodak24")
MODES = ("n2n", "n2c")
VAL_EVERY = 20

__all__ = [
    "SETS",
    "EVAL_SETS",
    "MODES",
    "load_images",
    "train_val_split",
    "center_crop",
    "RandomPatches",
    "NoisyImages",
    "DenoiseDataModule",
]


def _folder(name: str, root: str | Path | None) -> Path:
    if name not in SETS:
        raise TGuideError(f"unknown denoising set {name!r}; choose from {SETS}")
    folder = dataset_dir("denoise", root) / name
    if not folder.is_dir() or not any(folder.glob("*.png")):
        raise DataNotFoundError(f"denoising set {name!r}: no PNG files in {str(folder)!r}")
    return folder


@functools.lru_cache(maxsize=16)
def _load(folder: str, grey: bool) -> tuple[Tensor, ...]:
    from PIL import Image

    out = []
    for f in sorted(Path(folder).glob("*.png")):
        with Image.open(f) as im:
            a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
        t = torch.from_numpy(a.copy()).float().div_(255.0)
        out.append(t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous())
    return tuple(out)


def load_images(name: str, root: str | Path | None = None, grey: bool = True) -> list[Tensor]:
    """The images of set ``name`` in file order, each ``(C, H, W)`` float in [0, 1] (C = 1 if grey, else 3)."""
    return list(_load(str(_folder(name, root)), bool(grey)))


def train_val_split(n: int, val_every: int = VAL_EVERY) -> tuple[list[int], list[int]]:
    """Indices (0-based) of the train and validation images: image number ``i+1`` divisible by
    ``val_every`` goes to validation."""
    val = [i for i in range(n) if (i + 1) % val_every == 0]
    return [i for i in range(n) if (i + 1) % val_every != 0], val


def center_crop(images: Sequence[Tensor], size: int) -> Tensor:
    """Central ``size × size`` crops of ``(C, H, W)`` images, stacked ``(N, C, size, size)``."""
    out = []
    for x in images:
        h, w = x.shape[-2:]
        if size > min(h, w):
            raise ValueError(f"crop size {size} exceeds an image of size {h}×{w}")
        top, left = (h - size) // 2, (w - size) // 2
        out.append(x[..., top : top + size, left : left + size])
    return torch.stack(out)


def _pair(clean: Tensor, noise: NoiseModel, mode: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    return n2n_pair(clean, noise, gen) if mode == "n2n" else n2c_pair(clean, noise, gen)


class RandomPatches(Dataset):
    """``length`` random ``patch × patch`` crops (random flips / 90° rotations) of ``images`` with
    fresh noise pairs at every draw. Item: ``(input, target, clean)``, each ``(C, patch, patch)``."""

    def __init__(
        self,
        images: Sequence[Tensor],
        noise: NoiseModel,
        mode: str = "n2n",
        patch: int = 64,
        length: int = 4000,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        if mode not in MODES:
            raise TGuideError(f"mode must be one of {MODES}, got {mode!r}")
        if not images:
            raise TGuideError("RandomPatches needs at least one training image")
        small = min(min(x.shape[-2:]) for x in images)
        if patch > small:
            raise TGuideError(f"patch {patch} is larger than the smallest training image ({small} px)")
        self.images, self.noise, self.mode, self.patch = list(images), noise, mode, int(patch)
        self.length, self.seed, self.augment = int(length), int(seed), augment
        self._gen: torch.Generator | None = None

    def __len__(self) -> int:
        return self.length

    def _generator(self) -> torch.Generator:
        if self._gen is None:  # one stream per worker, advanced at every draw
            info = get_worker_info()
            self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + (info.id if info else 0))
        return self._gen

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self._generator()
        x = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        h, w = x.shape[-2:]
        top = int(torch.randint(h - self.patch + 1, (1,), generator=g))
        left = int(torch.randint(w - self.patch + 1, (1,), generator=g))
        clean = x[..., top : top + self.patch, left : left + self.patch]
        if self.augment:
            k, flip = torch.randint(4, (2,), generator=g).tolist()
            clean = torch.rot90(clean, k, dims=(-2, -1))
            clean = clean.flip(-1) if flip % 2 else clean
        clean = clean.contiguous()
        inp, target = _pair(clean, self.noise, self.mode, g)
        return inp, target, clean


class NoisyImages(Dataset):
    """Fixed noisy versions of whole images: item ``i`` = ``(noisy, clean, clean)``, the noise drawn
    from a generator seeded by ``(seed, i)``, so it is the same on every call and for every model."""

    def __init__(self, images: Sequence[Tensor], noise: NoiseModel, seed: int = 0) -> None:
        self.images, self.noise, self.seed = list(images), noise, int(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        clean = self.images[index]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * int(index) + 1)
        return self.noise(clean, g), clean, clean


class DenoiseDataModule(L.LightningDataModule):
    """Train400 patches for training (N2N or N2C pairs), its 20 held-out images for validation,
    BSD68 / Set12 / Kodak24 for test (one test dataloader per set, in ``test_sets`` order).

    Args:
        root: data root (default ``$TGUIDE_DATA``); files under ``<root>/denoise``.
        noise: training noise domain, ``"kind:level"`` (see :mod:`tguide.studies.denoising.noise`).
        eval_noise: noise of the validation/test images (default: ``noise``).
        mode: ``"n2n"`` (noisy target) or ``"n2c"`` (clean target).
        patch_size: training crop side; batch_size: training batch (eval batches are 1 image).
        patches_per_epoch: training samples per epoch.
        test_sets: evaluation sets among ``BSD68``, ``Set12``, ``Kodak24``.
        grey: convert to grey (Kodak24 is RGB); false keeps RGB (Train400 is grey, so RGB
            training is only meaningful with RGB data).
        max_eval_images: keep only the first k images of each validation/test set (quick runs).
        seed: seeds the training noise stream and the fixed evaluation noise.
    """

    def __init__(
        self,
        root: str | None = None,
        noise: str = "gaussian:25",
        eval_noise: str | None = None,
        mode: str = "n2n",
        patch_size: int = 64,
        batch_size: int = 16,
        patches_per_epoch: int = 4000,
        test_sets: Sequence[str] = EVAL_SETS,
        grey: bool = True,
        max_eval_images: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise TGuideError(f"data.mode must be one of {MODES}, got {mode!r}")
        bad = [s for s in test_sets if s not in EVAL_SETS]
        if bad:
            raise TGuideError(f"data.test_sets: unknown {bad}; choose from {EVAL_SETS}")
        if batch_size < 1 or patch_size < 1:
            raise TGuideError(f"data.batch_size and data.patch_size must be ≥ 1, got {batch_size}, {patch_size}")
        self.root, self.noise = root, parse_noise(noise)
        self.eval_noise = parse_noise(eval_noise) if eval_noise else self.noise
        self.mode, self.patch_size, self.batch_size = mode, int(patch_size), int(batch_size)
        self.patches_per_epoch, self.test_sets, self.grey = int(patches_per_epoch), list(test_sets), bool(grey)
        self.max_eval_images, self.num_workers, self.seed = max_eval_images, int(num_workers), int(seed)
        dataset_dir("denoise", root)  # fail fast
        self.train_set: RandomPatches | None = None
        self.val_set: NoisyImages | None = None
        self.test_sets_data: list[NoisyImages] = []

    def _cap(self, images: list[Tensor]) -> list[Tensor]:
        return images[: self.max_eval_images] if self.max_eval_images else images

    def setup(self, stage: str | None = None) -> None:
        images = load_images("Train400", self.root, self.grey)
        train_idx, val_idx = train_val_split(len(images))
        if self.train_set is None:
            self.train_set = RandomPatches(
                [images[i] for i in train_idx],
                self.noise,
                self.mode,
                self.patch_size,
                self.patches_per_epoch,
                self.seed,
            )
            self.val_set = NoisyImages(self._cap([images[i] for i in val_idx]), self.eval_noise, self.seed + 1)
        if stage in (None, "test") and not self.test_sets_data:
            self.test_sets_data = [
                NoisyImages(self._cap(load_images(s, self.root, self.grey)), self.eval_noise, self.seed + 2)
                for s in self.test_sets
            ]

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d, batch_size=1, num_workers=self.num_workers) for d in self.test_sets_data]
