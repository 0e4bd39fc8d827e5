"""MNIST read straight from the idx.gz files, and its LightningDataModule.

Offline, only the official 10k *test* files are present (``t10k-*-idx*-ubyte.gz``).
:func:`split_indices` divides them deterministically and stratified by class: within
each digit, images in file order are dealt 8 to train, 1 to val, 1 to test (positions
0-7, 8 and 9 of every ten), giving 8,000 / 1,000 / 1,000 images. No random generator is
involved, so the split is the same on every machine and library version. Results on
this split say "MNIST here is the 10k test set".

Users with a network who want the 60k training set can pass ``source="torchvision"``,
which uses ``torchvision.datasets.MNIST`` (download allowed) for train/val and the
official test set for test.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tguide.data.roots import dataset_dir
from tguide.errors import DataNotFoundError, TGuideError

IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
MEAN, STD = 0.1307, 0.3081

__all__ = ["read_idx", "load_mnist_test", "split_indices", "MNISTDataModule"]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzip or plain): big-endian magic, dims, then uint8 data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4:
        raise TGuideError(f"{str(path)!r} is not an idx file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise TGuideError(f"{str(path)!r} is not an unsigned-byte idx file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise TGuideError(f"{str(path)!r} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def load_mnist_test(root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """The 10k MNIST test images ``(10000, 28, 28) uint8`` and labels ``(10000,) int64``."""
    folder = dataset_dir("mnist", root, required=(IMAGES, LABELS))
    images = read_idx(folder / IMAGES)
    labels = read_idx(folder / LABELS)
    if images.shape[0] != labels.shape[0]:
        raise TGuideError(f"MNIST at {str(folder)!r}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def split_indices(labels: Tensor, parts: Sequence[int] = (8, 1, 1)) -> list[Tensor]:
    """Deterministic stratified split: within each class, file-order position ``p`` goes to the
    part that ``p mod sum(parts)`` falls in. Returns one sorted index tensor per part."""
    period = sum(parts)
    bounds = np.cumsum([0, *parts])
    out: list[list[Tensor]] = [[] for _ in parts]
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()  # file order
        pos = torch.arange(idx.numel()) % period
        for k in range(len(parts)):
            out[k].append(idx[(pos >= int(bounds[k])) & (pos < int(bounds[k + 1]))])
    return [torch.sort(torch.cat(chunks)).values for chunks in out]


def normalise(images: Tensor) -> Tensor:
    """uint8 ``(N, 28, 28)`` → float ``(N, 1, 28, 28)``, standardised with MNIST's mean/std."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def random_affine(x: Tensor, max_rotation: float, max_shift: float, max_scale: float) -> Tensor:
    """Jitter each image of ``x (B, C, H, W)`` by a random rotation, shift and scale (bilinear,
    zero padding in the standardised space's background value)."""
    b = x.shape[0]
    angle = torch.deg2rad((torch.rand(b, device=x.device) * 2 - 1) * max_rotation)
    scale = 1 + (torch.rand(b, device=x.device) * 2 - 1) * max_scale
    shift = (torch.rand(b, 2, device=x.device) * 2 - 1) * (2 * max_shift)  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    out = torch.nn.functional.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros")
    return out + background


class MNISTDataModule(L.LightningDataModule):
    """MNIST for classification (default recipe) and as a transfer source.

    Args:
        root: data root (default: ``$TGUIDE_DATA``); the files are read from ``<root>/mnist``.
        batch_size: training batch size (eval loaders use 4× that).
        digits: keep only these digits (e.g. ``[0,1,2,3,4,5,6]`` as a few-shot source); labels
            are kept as the digit values.
        parts: train/val/test shares per ten images of a class (see :func:`split_indices`).
        source: ``"offline"`` (the 10k test files, split) or ``"torchvision"`` (download the
            60k training set with torchvision; needs a network).
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        augment: random affine jitter of training batches (±``max_rotation`` degrees, ±``max_shift``
            of the side, scale 1±``max_scale``), applied on the device after transfer.
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        digits: Sequence[int] | None = None,
        parts: Sequence[int] = (8, 1, 1),
        source: str = "offline",
        num_workers: int = 0,
        augment: bool = True,
        max_rotation: float = 10.0,
        max_shift: float = 0.08,
        max_scale: float = 0.08,
    ) -> None:
        super().__init__()
        if source not in ("offline", "torchvision"):
            raise TGuideError(f"data.source must be 'offline' or 'torchvision', got {source!r}")
        if batch_size < 1:
            raise TGuideError(f"data.batch_size must be ≥ 1, got {batch_size}")
        self.root = root
        self.batch_size = batch_size
        self.digits = list(digits) if digits is not None else None
        self.parts = tuple(parts)
        self.source = source
        self.num_workers = num_workers
        self.num_classes = 10
        self.augment = augment
        self.max_rotation, self.max_shift, self.max_scale = max_rotation, max_shift, max_scale
        if source == "offline":  # fail fast, before any trainer or process group starts
            dataset_dir("mnist", root, required=(IMAGES, LABELS))
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _keep(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.digits is None:
            return x, y
        mask = torch.isin(y, torch.tensor(self.digits))
        return x[mask], y[mask]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.source == "torchvision":
            self._setup_torchvision()
            return
        images, labels = load_mnist_test(self.root)
        images, labels = self._keep(images, labels)
        x = normalise(images)
        train, val, test = split_indices(labels, self.parts)
        self.train_set = TensorDataset(x[train], labels[train])
        self.val_set = TensorDataset(x[val], labels[val])
        self.test_set = TensorDataset(x[test], labels[test])

    def _setup_torchvision(self) -> None:
        from torchvision.datasets import MNIST

        from tguide.data.roots import data_root

        base = Path(self.root or data_root()) / "mnist_torchvision"
        try:
            full = MNIST(str(base), train=True, download=True)
            test = MNIST(str(base), train=False, download=True)
        except (RuntimeError, OSError) as err:
            raise DataNotFoundError(
                f"could not download MNIST into {str(base)!r} ({err}); without a network use data.source=offline"
            ) from err
        x, y = self._keep(full.data, full.targets)
        xt, yt = self._keep(test.data, test.targets)
        train, val = split_indices(y, (9, 1))
        x = normalise(x)
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(normalise(xt), yt)

    def _loader(self, dataset: TensorDataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        assert dataset is not None, "setup() builds every split"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            x, y = batch
            return random_affine(x, self.max_rotation, self.max_shift, self.max_scale), y
        return batch

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, False, 4 * self.batch_size)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, False, 4 * self.batch_size)
