"""A folder of images as a target task: ``<root>/<class>/<image>``, and the named tguide targets.

Layouts read by :func:`scan_image_folder` and :class:`ImageFolderDataModule`:

- ``<root>/<class>/*.jpg|png|...``: one sub-folder per class (sorted names = class ids);
- ``<root>/{train,val,test}/<class>/...``: ready-made splits, used as they are.

Without split folders the DataModule draws a seeded, class-stratified split (fractions
configurable). Grey, palette, RGB and RGBA images are accepted and converted. Every problem is
one line (:class:`ImageFolderError`): a missing or empty folder, a single class, an image that
cannot be decoded (named).

:func:`load_target` gives a :class:`TargetData` (images or their paths, labels, class names)
for a folder path or one of the named datasets of :data:`TARGETS`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tguide.errors import DataNotFoundError, TGuideError

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "TARGETS", "ImageFolderDataModule", "ImageFolderDataset", "ImageFolderError",
           "TargetData", "load_target", "open_image", "scan_image_folder", "stratified_split"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS = ("train", "val", "test")
TARGETS = ("cifar10", "office31_webcam", "office31_amazon", "mnist_m", "usps", "mnist")


class ImageFolderError(TGuideError):
    """An image folder that cannot serve as a target (missing, empty, one class, unreadable image)."""


def open_image(item: Any) -> Any:
    """A decoded PIL image from a path (or the image itself); :class:`ImageFolderError` naming an
    unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(item, (str, os.PathLike)):
        return item
    try:
        with Image.open(item) as im:
            im.load()
            return im.copy()  # any mode: the candidate's transform converts it (grey/RGB/RGBA/palette)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageFolderError(f"cannot read image {str(item)!r}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'not an image'}") from None


@dataclass
class TargetData:
    """A labelled target set.

    Attributes:
        items: one entry per sample: a file path (decoded when read) or a PIL image.
        labels: ``(N,)`` int64 class ids 0..C-1.
        classes: class names (``classes[labels[i]]``).
        name: the dataset name or folder.
        keys: one stable string per sample (relative path, or ``name:index``): the cache key.
    """

    items: list[Any]
    labels: Tensor
    classes: tuple[str, ...]
    name: str
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [f"{self.name}:{i}" for i in range(len(self.items))]
        if not (len(self.items) == len(self.labels) == len(self.keys)):
            raise ValueError("TargetData: items, labels and keys must have one entry per sample")

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Any:
        return open_image(self.items[i])

    def subset(self, index: Sequence[int] | Tensor) -> TargetData:
        idx = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
        return TargetData([self.items[i] for i in idx], self.labels[idx], self.classes, self.name,
                          [self.keys[i] for i in idx])

    def digest(self) -> str:
        """sha256 of the sample keys and labels (which samples, in which order)."""
        h = hashlib.sha256()
        for key, y in zip(self.keys, self.labels.tolist()):
            h.update(f"{key}\t{y}\n".encode())
        return h.hexdigest()

    def dataset(self, transform: Callable[[Any], Tensor]) -> ImageFolderDataset:
        return ImageFolderDataset(self, transform)


class ImageFolderDataset(Dataset):
    """``(transform(image), label)`` pairs of a :class:`TargetData`; ``targets`` holds the labels."""

    def __init__(self, data: TargetData, transform: Callable[[Any], Tensor]) -> None:
        self.data, self.transform = data, transform
        self.targets = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.data.image(i)), self.data.labels[i]


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def scan_image_folder(root: str | os.PathLike[str], classes: Sequence[str] | None = None) -> TargetData:
    """Paths and labels of ``<root>/<class>/<images>`` (images are not decoded here).

    ``classes`` fixes the class list (for val/test folders of a split layout). Raises
    :class:`ImageFolderError` for a missing folder, no class sub-folders, no images, or a
    single class.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ImageFolderError(f"image folder {str(base.resolve())!r} does not exist")
    dirs = _class_dirs(base)
    names = tuple(classes) if classes is not None else tuple(d.name for d in dirs)
    if not names:
        loose = _images_in(base)
        raise ImageFolderError(f"image folder {str(base)!r} has no class sub-folders"
                               + (f" (found {len(loose)} loose images; put each class in its own sub-folder)"
                                  if loose else " and no images; expected <root>/<class>/<image>"))
    items: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(names):
        files = _images_in(base / name) if (base / name).is_dir() else []
        items += files
        labels += [c] * len(files)
    if not items:
        raise ImageFolderError(f"image folder {str(base)!r} has class folders but no images "
                               f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
    present = sorted(set(labels))
    if len(present) < 2:
        raise ImageFolderError(f"image folder {str(base)!r} has images of one class only ({names[present[0]]!r}); "
                               "a target task needs at least two classes")
    keys = [str(p.relative_to(base)) for p in items]
    return TargetData(list(items), torch.tensor(labels, dtype=torch.int64), names, str(base), keys)


def _has_splits(base: Path) -> bool:
    return (base / "train").is_dir() and any((base / s).is_dir() for s in ("val", "test"))


def stratified_split(labels: Tensor, fractions: Sequence[float], seed: int = 0) -> list[Tensor]:
    """Seeded, class-stratified split of ``range(N)`` into parts of the given fractions (sum 1).

    Each class is shuffled with a private generator and cut by the fractions (largest parts
    first get the rounding), so every part keeps the class proportions.
    """
    fr = [float(f) for f in fractions]
    if not fr or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise ImageFolderError(f"split fractions must be ≥ 0 and sum to 1, got {list(fractions)}")
    gen = torch.Generator().manual_seed(int(seed))
    parts: list[list[int]] = [[] for _ in fr]
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n = idx.numel()
        cuts = [int(round(sum(fr[:k + 1]) * n)) for k in range(len(fr))]
        start = 0
        for k, end in enumerate(cuts):
            parts[k] += idx[start:end].tolist()
            start = end
    return [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]


def _folder_target(folder: Path, name: str, split: str | None) -> TargetData:
    if _has_splits(folder):
        use = split or "train"
        if not (folder / use).is_dir():
            raise ImageFolderError(f"image folder {str(folder)!r} has split folders but no {use!r}")
        classes = [d.name for d in _class_dirs(folder / "train")]
        data = scan_image_folder(folder / use, classes)
        data.name = name
        return data
    data = scan_image_folder(folder)
    data.name = name
    return data


def _from_arrays(images: Any, labels: Tensor, classes: Sequence[str], name: str, mode: str) -> TargetData:
    from PIL import Image

    arr = images.numpy() if isinstance(images, Tensor) else images
    if arr.ndim == 4:  # (N, C, H, W) -> (N, H, W, C)
        arr = arr.transpose(0, 2, 3, 1)
    items = [Image.fromarray(a) for a in arr]
    return TargetData(items, labels.to(torch.int64), tuple(classes), name, [f"{name}:{i}" for i in range(len(items))])


def load_target(name_or_path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                split: str | None = None, max_samples: int | None = None, seed: int = 0) -> TargetData:
    """A target task: a folder path or a named dataset (:data:`TARGETS`).

    Args:
        name_or_path: ``cifar10`` (``<data>/cifar10/test``, 3,000 JPEGs), ``office31_webcam``,
            ``office31_amazon`` (full-size images), ``mnist_m``, ``usps`` (raw 16×16 digits of the
            train file), ``mnist`` (the 10k test set), or a folder (``<class>/<image>``, or
            ``train/ val/ test/`` splits).
        root: data root for the named datasets (default ``$TGUIDE_DATA``).
        split: for a folder with split sub-folders, which one (default ``train``); for ``usps``
            ``"test"`` reads the test file.
        max_samples: keep a seeded, class-stratified random subset of this many samples.
        seed: seed of that subset.
    """
    from tguide.data.roots import dataset_dir

    key = str(name_or_path)
    if key in TARGETS:
        if key == "cifar10":
            data = _folder_target(dataset_dir("cifar10", root, required=("test",)) / "test", "cifar10", None)
        elif key.startswith("office31_"):
            domain = key.split("_", 1)[1]
            data = _folder_target(dataset_dir("domains/office31", root, required=(domain,)) / domain, key, None)
        elif key == "mnist_m":
            from tguide.data.mnist_m import FOLDER, IMAGES, LABELS, read_label_file

            folder = dataset_dir(FOLDER, root, required=(IMAGES, LABELS))
            table = read_label_file(folder / LABELS)
            files = sorted((folder / IMAGES).glob("*.png"))
            files = [f for f in files if f.name in table]
            if not files:
                raise DataNotFoundError(f"MNIST-M folder {str(folder / IMAGES)!r} has no labelled .png files")
            data = TargetData(list(files), torch.tensor([table[f.name] for f in files], dtype=torch.int64),
                              tuple(str(d) for d in range(10)), "mnist_m", [f"mnist_m:{f.name}" for f in files])
        elif key == "usps":
            from torchvision.datasets import USPS

            from tguide.data.usps import FILES

            train = split != "test"
            folder = dataset_dir("usps", root, required=(FILES[train],))
            ds = USPS(str(folder), train=train, download=False)
            import numpy as np

            data = _from_arrays(np.asarray(ds.data), torch.as_tensor(np.asarray(ds.targets)),
                                [str(d) for d in range(10)], "usps" + ("" if train else "_test"), "L")
        else:
            from tguide.data.mnist import load_mnist_test

            images, labels = load_mnist_test(root)
            data = _from_arrays(images, labels, [str(d) for d in range(10)], "mnist", "L")
    else:
        path = Path(key).expanduser()
        if not path.exists():
            raise ImageFolderError(f"unknown target {key!r}: not a folder and not one of {', '.join(TARGETS)}")
        data = _folder_target(path, str(path.resolve()), split)
    if max_samples is not None and max_samples < len(data):
        from tguide.metrics._subset import stratified_subset

        try:
            keep = stratified_subset(data.labels, int(max_samples), seed)
        except ValueError as err:
            raise TGuideError(f"target {key!r}: {err}") from None
        data = data.subset(keep)
    return data


class ImageFolderDataModule(L.LightningDataModule):
    """Train/val/test loaders over an image folder (see the module doc for the layouts).

    Args:
        root: the folder.
        batch_size, num_workers: loader settings.
        split: fractions (train, val, test) of the seeded stratified split when the folder has
            no ``train/ val/ test/`` sub-folders.
        seed: seed of that split.
        image_size: images are resized to ``image_size × image_size``.
        channels: 1 (grey) or 3 (RGB): every image is converted to it.
        mean, std: per-channel normalisation (default 0.5 / 0.5).
        transform: PIL image → tensor, replacing the resize/convert/normalise above.
    """

    def __init__(self, root: str | os.PathLike[str], batch_size: int = 64, num_workers: int = 0,
                 split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, image_size: int = 32,
                 channels: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 transform: Callable[[Any], Tensor] | None = None) -> None:
        super().__init__()
        if root is None or str(root) == "":
            raise ImageFolderError("data.root is not set; pass the image folder, e.g. data.root=/path/to/images")
        if channels not in (1, 3):
            raise ImageFolderError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root).expanduser()
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.fractions, self.seed = tuple(float(f) for f in split), int(seed)
        if len(self.fractions) != 3:
            raise ImageFolderError(f"split must be three fractions (train, val, test), got {list(split)}")
        stratified_split(torch.zeros(1, dtype=torch.int64), self.fractions)  # validates the fractions
        if transform is None:
            from torchvision import transforms as T

            from tguide.data.transforms import ConvertMode as _Convert

            mean = tuple(mean) if mean is not None else (0.5,) * channels
            std = tuple(std) if std is not None else (0.5,) * channels
            transform = T.Compose([_Convert("L" if channels == 1 else "RGB"),
                                   T.Resize((image_size, image_size), antialias=True), T.ToTensor(),
                                   T.Normalize(mean, std)])
        self.transform = transform
        self.parts: dict[str, TargetData] = {}
        self.classes: tuple[str, ...] = ()

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        if _has_splits(self.root):
            train = scan_image_folder(self.root / "train")
            self.parts["train"] = train
            for name in ("val", "test"):
                if (self.root / name).is_dir():
                    self.parts[name] = scan_image_folder(self.root / name, train.classes)
            self.classes = train.classes
            return
        data = scan_image_folder(self.root)
        self.classes = data.classes
        for name, idx in zip(SPLITS, stratified_split(data.labels, self.fractions, self.seed)):
            self.parts[name] = data.subset(idx)

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        if part not in self.parts or len(self.parts[part]) == 0:
            raise ImageFolderError(f"image folder {str(self.root)!r} has no {part!r} samples")
        return DataLoader(self.parts[part].dataset(self.transform), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
