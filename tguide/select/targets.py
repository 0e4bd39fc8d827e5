"""Fixed, seeded, stratified train / val / test splits of the metric benchmark's five targets.

Each split is a list of ``(item, label)`` pairs where ``item`` is a file path (``str``) or a PIL
image (USPS, which ships as LIBSVM text); :func:`open_image` turns either into a PIL image, so
every candidate applies its *own* input transform (:func:`tguide.select.zoo.zoo_transform`).

The splits are fixed **before any transferability score is computed** and never depend on a
model. Within each class, the items (in file order) are permuted by
``numpy.random.default_rng([SPLIT_SEED, class_index])`` (``SPLIT_SEED = 0``) and the first
``n_train`` go to train, the next ``n_val`` to val, the next ``n_test`` to test; the rest are
unused. Classes are numbered as in the project's loaders (:mod:`tguide.data`).

Budget note: the first plan was 40 train images per class for cifar10 / mnist_m / usps; a timed
estimate of the full ground-truth grid (``bench/zoo_groundtruth.py --estimate``) exceeded the
budget, so (after cutting fine-tuning to 4 epochs) the train count was halved to 20 per class,
before anything was run on these splits. Val and test counts are unchanged.

=================  ==========================================  ==============================
target             source files (shared data root)              per class: train / val / test
=================  ==========================================  ==============================
cifar10            ``cifar10/test`` (300 JPEG per class, q≈75)  20 / 20 / 100 (of 300)
office31_webcam    ``domains/office31/webcam`` (all 795, 31     50% / 15% / rest (≈35%) of each
                   classes, 11–43 per class)                    class (``round``; val ≥ 1)
office31_amazon    ``domains/office31/amazon`` (1,000 subset,   same fractions (16 / 5 / 11–12)
                   32–33 per class)
mnist_m            ``domains/mnist_m`` (first 3,000 test PNGs,  20 / 20 / 100 (of 271–340)
                   271–340 per digit)
usps               ``usps/usps.bz2`` (train file) for train     20 / 20 from the train file;
                   and val, ``usps/usps.t.bz2`` (test file)     100 from the test file
=================  ==========================================  ==============================

Totals: cifar10 200 / 200 / 1,000; office31_webcam 400 / 116 / 279; office31_amazon 496 / 155 /
349; mnist_m 200 / 200 / 1,000; usps 200 / 200 / 1,000 (computed by :func:`load_target`, see
``TargetSplit.sizes``). USPS items are the raw 16×16 grey digits as PIL ``L`` images (ink
white); the candidate's transform resizes them (LeNets: 20×20 digit padded to 28×28).
Office-31 and MNIST-M share their class names across domains; MNIST-M image *i* is derived
from MNIST test image *i* (none of the zoo's MNIST LeNets was trained on MNIST test images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tguide.data.roots import dataset_dir
from tguide.errors import TGuideError

SPLIT_SEED = 0
TARGETS = ("cifar10", "office31_webcam", "office31_amazon", "mnist_m", "usps")
# per-class (train, val, test) counts, or fractions for Office-31 (test takes the rest)
PER_CLASS: dict[str, tuple[int, int, int]] = {"cifar10": (20, 20, 100), "mnist_m": (20, 20, 100),
                                              "usps": (20, 20, 100)}
OFFICE_FRACTIONS = (0.50, 0.15)

__all__ = ["OFFICE_FRACTIONS", "PER_CLASS", "SPLIT_SEED", "TARGETS", "TargetSplit", "load_target",
           "open_image", "stratified_split"]

Item = tuple[Any, int]


@dataclass(frozen=True)
class TargetSplit:
    """One benchmark target: ``train``/``val``/``test`` lists of ``(path or PIL image, label)``."""

    name: str
    classes: tuple[str, ...]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def split(self, which: str) -> list[Item]:
        if which not in ("train", "val", "test"):
            raise TGuideError(f"split must be 'train', 'val' or 'test', got {which!r}")
        return getattr(self, which)


def open_image(item: Any) -> Any:
    """A split item → PIL image (paths are opened and fully loaded; PIL images pass through)."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as im:
        im.load()
        return im.copy()


def _counts(n: int, spec: tuple[int, int, int] | tuple[float, float]) -> tuple[int, int, int]:
    if len(spec) == 3:
        tr, va, te = (int(v) for v in spec)
        if tr + va + te > n:
            raise TGuideError(f"a class has {n} items, fewer than the {tr}+{va}+{te} the split needs")
        return tr, va, te
    tr = int(round(spec[0] * n))
    va = max(1, int(round(spec[1] * n)))
    te = n - tr - va
    if tr < 1 or te < 1:
        raise TGuideError(f"a class has only {n} items: cannot split it by fractions {spec}")
    return tr, va, te


def stratified_split(labels: Sequence[int], spec: tuple[int, int, int] | tuple[float, float],
                     seed: int = SPLIT_SEED) -> tuple[list[int], list[int], list[int]]:
    """Indices ``(train, val, test)``: per class, permute that class's indices (in the given order)
    with ``default_rng([seed, class])`` and deal ``spec`` = counts ``(train, val, test)`` or fractions
    ``(train, val)`` (test = rest). Each list is sorted."""
    y = np.asarray(labels, dtype=np.int64)
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = idx[np.random.default_rng([int(seed), int(c)]).permutation(idx.size)]
        tr, va, te = _counts(idx.size, spec)
        out[0].extend(perm[:tr].tolist())
        out[1].extend(perm[tr:tr + va].tolist())
        out[2].extend(perm[tr + va:tr + va + te].tolist())
    return sorted(out[0]), sorted(out[1]), sorted(out[2])


def _folder_items(folder: Path, classes: Sequence[str], exts: tuple[str, ...]) -> list[Item]:
    items: list[Item] = []
    for c, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in exts)
        if not files:
            raise TGuideError(f"class folder {str(folder / name)!r} has no images")
        items.extend((str(f), c) for f in files)
    return items


def _take(items: list[Item], idx: list[int]) -> list[Item]:
    return [items[i] for i in idx]


def load_target(name: str, root: str | os.PathLike[str] | None = None, *,
                per_class: tuple[int, int, int] | None = None, seed: int = SPLIT_SEED) -> TargetSplit:
    """The fixed split of target ``name`` (one of :data:`TARGETS`; see the module docstring).

    ``per_class`` overrides the per-class ``(train, val, test)`` counts (for every target,
    Office-31 included: used by the ``--quick`` smoke run); leave it ``None`` for the benchmark.
    """
    if name not in TARGETS:
        raise TGuideError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    if name == "cifar10":
        from tguide.data.cifar10 import CLASSES

        folder = dataset_dir("cifar10", root, required=("test",)) / "test"
        items = _folder_items(folder, CLASSES, (".jpg", ".jpeg", ".png"))
        spec: Any = per_class or PER_CLASS[name]
        tr, va, te = stratified_split([y for _, y in items], spec, seed)
        desc = f"CIFAR-10 JPEG test copy, per class {spec}, seed {seed}"
        return TargetSplit(name, tuple(CLASSES), _take(items, tr), _take(items, va), _take(items, te), desc)
    if name.startswith("office31_"):
        domain = name.split("_", 1)[1]
        folder = dataset_dir("domains/office31", root, required=(domain,)) / domain
        classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        items = _folder_items(folder, classes, (".jpg", ".jpeg", ".png"))
        spec = per_class or OFFICE_FRACTIONS
        tr, va, te = stratified_split([y for _, y in items], spec, seed)
        desc = f"Office-31 {domain}, per class {spec} (fractions: test = rest), seed {seed}"
        return TargetSplit(name, classes, _take(items, tr), _take(items, va), _take(items, te), desc)
    if name == "mnist_m":
        from tguide.data.mnist_m import FOLDER, IMAGES, LABELS, read_label_file

        folder = dataset_dir(FOLDER, root, required=(IMAGES, LABELS))
        labels = read_label_file(folder / LABELS)
        files = sorted((folder / IMAGES).glob("*.png"))
        items = [(str(f), labels[f.name]) for f in files]
        spec = per_class or PER_CLASS[name]
        tr, va, te = stratified_split([y for _, y in items], spec, seed)
        desc = f"MNIST-M first 3,000 test PNGs, per class {spec}, seed {seed}"
        return TargetSplit(name, tuple(str(d) for d in range(10)), _take(items, tr), _take(items, va),
                           _take(items, te), desc)
    # usps: train + val from the train file, test from the test file
    from PIL import Image
    from torchvision.datasets import USPS

    from tguide.data.usps import FILES

    spec = per_class or PER_CLASS[name]
    parts: list[list[Item]] = []
    for train in (True, False):
        folder = dataset_dir("usps", root, required=(FILES[train],))
        ds = USPS(str(folder), train=train, download=False)
        data, targets = np.asarray(ds.data), [int(t) for t in ds.targets]
        want = (spec[0], spec[1], 0) if train else (0, 0, spec[2])
        tr, va, te = stratified_split(targets, want, seed + (0 if train else 1))
        for idx in ((tr, va) if train else (te,)):
            parts.append([(Image.fromarray(np.ascontiguousarray(data[i], dtype=np.uint8)), targets[i]) for i in idx])
    desc = (f"USPS: train/val {spec[0]}/{spec[1]} per class from usps.bz2 (seed {seed}), "
            f"test {spec[2]} per class from usps.t.bz2 (seed {seed + 1})")
    return TargetSplit(name, tuple(str(d) for d in range(10)), parts[0], parts[1], parts[2], desc)
