"""The fixed probe subset of a loader and each process's share of it (:func:`tguide.probe.transferability_scores`)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset

from tguide.features.extract import dataset_labels
from tguide.metrics._subset import stratified_subset

__all__ = ["probe_ids", "probe_share"]


_UNIFORM_WARNED: set[str] = set()  # datasets (by type) already warned about a uniform probe subset


def probe_ids(dataset: Any, n: int, max_samples: int | None, seed: int, what: str, stratify: bool) -> Tensor:
    """The sorted dataset positions of the probe subset: all ``n``, a stratified or a uniform draw."""
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    labels = dataset_labels(dataset) if stratify else None
    if labels is not None and labels.numel() == n:
        try:
            return stratified_subset(labels, max_samples, seed).cpu()
        except ValueError as err:
            raise ValueError(f"`{what}` max_samples: {err}") from err
    kind = type(dataset).__name__
    if stratify and kind not in _UNIFORM_WARNED:
        _UNIFORM_WARNED.add(kind)
        warnings.warn(
            f"`{what}`: {kind} does not expose its labels (no `targets`/`labels` attribute), so the "
            f"max_samples={max_samples} probe subset is drawn uniformly, not stratified by class; give the "
            "dataset a `targets` attribute for a class-stratified subset.",
            UserWarning,
            stacklevel=4,
        )
    gen = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=gen)[:max_samples]).values


def probe_share(
    loader: DataLoader, max_samples: int | None, seed: int, rank: int, world: int, what: str, stratify: bool = True
) -> tuple[DataLoader, Tensor]:
    """This rank's share of a fixed probe subset of ``loader.dataset``: ``(loader, dataset ids)``.

    The subset (all samples when ``max_samples`` is ``None``) is the seeded, class-stratified
    random subset of ``max_samples`` (:func:`tguide.metrics._subset.stratified_subset`, every
    class keeps one sample at least) when the dataset exposes its labels without reading its
    inputs (:func:`tguide.features.extract.dataset_labels`: ``targets``/``labels`` attributes, a
    ``TensorDataset``, a ``Subset`` of those). Otherwise the labels could only be known by running
    the loader over every sample, so the subset is a seeded uniform draw instead, and a warning
    says so once per dataset type. ``stratify=False`` (segmentation: an image holds many classes)
    draws the uniform subset of images without a warning. Its indices are sorted; rank ``r`` of
    ``world`` reads positions ``r, r+world, ...`` (every rank draws the same subset). The loader
    does not shuffle and owns its generator, so probing never draws from the global RNG (training
    with and without the monitor sees the same random numbers).
    """
    if not isinstance(loader, DataLoader):
        raise ValueError(f"`{what}` must give a torch DataLoader, got {type(loader).__name__}.")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"`{what}`: the loader's dataset must be map-style (with __len__ and indexing), "
            f"not {type(dataset).__name__}, so that a fixed probe subset can be drawn."
        )
    n = len(dataset)
    if n == 0:
        raise ValueError(f"`{what}`: the loader's dataset is empty.")
    ids = probe_ids(dataset, n, max_samples, seed, what, stratify)[rank::world]
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 64
    share = DataLoader(
        Subset(dataset, ids.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    return share, ids
