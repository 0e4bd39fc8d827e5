r"""A target's data for fine-tuning, read through the candidate's own transform.

:func:`target_datamodule` builds the loaders of a named target (the fixed splits of
:mod:`tguide.data.targets`) or an image folder (:class:`tguide.data.image_folder.ImageFolderDataModule`),
always through the candidate's own transform (size, normalisation, grey ↔ RGB);
:func:`source_samples` draws the source images of the OTCE pre-fine-tune.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from tguide.errors import TGuideError

__all__ = [
    "OFFLINE_SOURCES",
    "TargetDataModule",
    "candidate_transform",
    "input_shape",
    "resolve",
    "source_samples",
    "target_datamodule",
]

#: candidate source dataset (Candidate.meta["source"]) → name for :func:`tguide.data.targets.load_target`
OFFLINE_SOURCES = {"cifar10": "cifar10", "mnist": "mnist"}


def resolve(candidate: Any) -> Any:
    from tguide.select.candidates import resolve_candidate

    return resolve_candidate(candidate)


def candidate_transform(candidate: Any) -> Callable[[Any], Tensor]:
    """The candidate's own input transform (PIL image → tensor); a Hydra factory for ``data.transform``."""
    return resolve(candidate).transform


def input_shape(transform: Callable[[Any], Tensor]) -> tuple[int, ...]:
    from PIL import Image

    return tuple(transform(Image.new("RGB", (64, 64))).shape)


class TargetDataModule(L.LightningDataModule):
    """Loaders over fixed train/val/test :class:`~tguide.data.targets.Target` parts.

    Args:
        parts: ``{"train": TargetData, "val": ..., "test": ...}`` (``val`` and ``test`` may be missing;
            the missing one reuses the other).
        transform: PIL image → tensor (the candidate's).
        batch_size, num_workers, seed: loader settings (``seed`` orders the training shuffle).
        train_per_class: keep a seeded random subset of this many training images per class (few-shot).
    """

    def __init__(
        self,
        parts: Mapping[str, Any],
        transform: Callable[[Any], Tensor],
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        train_per_class: int | None = None,
    ) -> None:
        super().__init__()
        if "train" not in parts:
            raise TGuideError("TargetDataModule needs a 'train' part")
        self.parts = dict(parts)
        self.parts.setdefault("val", self.parts.get("test"))
        self.parts.setdefault("test", self.parts.get("val"))
        if self.parts["val"] is None:
            raise TGuideError("TargetDataModule needs a 'val' or a 'test' part")
        if train_per_class is not None:
            self.parts["train"] = _per_class(self.parts["train"], int(train_per_class), seed)
        self.transform = transform
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.classes: tuple[str, ...] = tuple(self.parts["train"].classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, part: str, shuffle: bool) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            self.parts[part].dataset(self.transform),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> Any:
        return self._loader("train", True)

    def val_dataloader(self) -> Any:
        return self._loader("val", False)

    def test_dataloader(self) -> Any:
        return self._loader("test", False)


def _per_class(data: Any, k: int, seed: int) -> Any:
    """A seeded subset of ``k`` items per class (all of a class with fewer)."""
    if k < 1:
        raise TGuideError(f"train_per_class must be ≥ 1, got {k}")
    gen = torch.Generator().manual_seed(int(seed))
    keep: list[int] = []
    for c in torch.unique(data.labels).tolist():
        idx = torch.nonzero(data.labels == c).flatten()
        keep += idx[torch.randperm(idx.numel(), generator=gen)[:k]].tolist()
    return data.subset(sorted(keep))


def _named_parts(name: str, root: Any) -> dict[str, Any]:
    """The fixed train/val/test parts of a named target (:data:`tguide.data.targets.TARGETS`)."""
    from tguide.data.targets import load_target

    target = load_target(name, root)
    return {part: target.split(part) for part in ("train", "val", "test")}


def target_datamodule(
    root: Any,
    transform: Callable[[Any], Tensor] | None = None,
    candidate: Any = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    train_per_class: int | None = None,
    data_root: Any = None,
    **kwargs: Any,
) -> L.LightningDataModule:
    """A target's data module, read through the candidate's transform.

    Args:
        root: a named target (the fixed splits of :data:`tguide.data.targets.TARGETS`: ``cifar10``,
            ``office31_webcam``, ``office31_amazon``, ``mnist_m``, ``usps``, ``mnist``) or an image folder
            (``<class>/<image>`` or ``train/ val/ test/`` splits,
            :class:`~tguide.data.image_folder.ImageFolderDataModule`).
        transform: PIL image → tensor; default the transform of ``candidate``.
        candidate: a candidate spec (used only for its transform).
        split: train/val/test fractions for a folder without split folders.
        train_per_class: keep this many training images per class (seeded; few-shot targets).
        data_root: data root of the named targets (default ``$TGUIDE_DATA``).
        kwargs: further :class:`ImageFolderDataModule` options (``image_size`` …; ignored when a
            transform is given).
    """
    from tguide.data import targets
    from tguide.data.image_folder import ImageFolderDataModule

    if transform is None:
        if candidate is None:
            raise TGuideError("target_datamodule needs a transform or a candidate (whose transform it uses)")
        transform = candidate_transform(candidate)
    if root is None or str(root) == "":
        raise TGuideError(
            f"no target: set data.root to an image folder or a named target ({', '.join(targets.TARGETS)})"
        )
    name = str(root)
    if name in targets.TARGETS:
        return TargetDataModule(
            _named_parts(name, data_root), transform, batch_size, num_workers, seed, train_per_class
        )
    kwargs = {k: v for k, v in kwargs.items() if k in ("image_size", "channels", "mean", "std")}
    dm = ImageFolderDataModule(
        root, batch_size=batch_size, num_workers=num_workers, split=split, seed=seed, transform=transform, **kwargs
    )
    if train_per_class is None:
        return dm
    dm.setup()
    return TargetDataModule(dm.parts, transform, batch_size, num_workers, seed, train_per_class)


def source_samples(
    candidate: Any, source: Any = None, *, max_samples: int = 512, seed: int = 0, data_root: Any = None
) -> tuple[Tensor, Tensor]:
    """Source images ``(M, C, H, W)`` (through the candidate's transform) and labels ``(M,)`` for the pre-fine-tune.

    ``source``: a named dataset or folder for :func:`tguide.data.targets.load_target`; default
    the candidate's own source dataset (``Candidate.meta["source"]``) when it is available offline.
    ``max_samples``: a seeded, class-stratified subset.
    """
    from tguide.data.targets import load_target

    cand = resolve(candidate) if not hasattr(candidate, "transform") else candidate
    if source is None:
        known = (getattr(cand, "meta", None) or {}).get("source")
        if known not in OFFLINE_SOURCES:
            raise TGuideError(
                f"candidate {cand.name!r}: its source dataset is "
                f"{'unknown' if known is None else repr(known) + ', not available offline'}; pass the source samples "
                "for the OTCE pre-fine-tune with finetune.pretune_source=NAME_OR_FOLDER (e.g. cifar10, mnist, a folder)"
            )
        source = OFFLINE_SOURCES[known]
    data = load_target(str(source), root=data_root, max_samples=int(max_samples), seed=int(seed))
    x = torch.stack([cand.transform(data.image(i)) for i in range(len(data))])
    return x, data.labels.clone()
