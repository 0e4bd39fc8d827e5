"""Image-level features: run a network over a loader and keep one row per sample per layer.

:func:`extract_features` runs the model in eval mode without gradients over a loader, captures
the named layers (:class:`tguide.features.capture.LayerCapture`, pooled per layer by
:func:`tguide.features.pooling.reduce_output`) and returns a :class:`FeatureSet`: per layer
``(N, D)`` features, the ``(N,)`` labels and the ``(N,)`` sample ids.

``max_samples`` is a seeded, class-stratified random subset (every class keeps at least one
sample; :func:`tguide.metrics._subset.stratified_subset`), the same rule as everywhere in tguide.
``layers="auto"`` takes :func:`tguide.features.layers.auto_layers`. The pseudo-layer
:data:`tguide.features.layers.OUTPUT` (``"@output"``) captures the model's own output.

Pixel-level mode, for segmentation (one row per sampled pixel): :mod:`tguide.features.pixels`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tguide.features.capture import LayerCapture
from tguide.features.modes import eval_mode
from tguide.features.pooling import PoolSpec

__all__ = [
    "FeatureSet",
    "Unpack",
    "batch_ids",
    "dataset_labels",
    "default_unpack",
    "extract_features",
    "integer_labels",
    "run_batches",
    "stratified_loader",
]

Unpack = Callable[[Any], tuple[Tensor, Tensor]]

_INPUT_KEYS = ("x", "image", "images", "input", "inputs")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets", "mask", "masks")


@dataclass(frozen=True)
class FeatureSet:
    """Features of several layers for the same rows.

    Attributes:
        features: layer name -> ``(M, D_layer)`` tensor (float32 unless the model is not).
        labels: ``(M,)`` int64 class label of every row.
        ids: ``(M,)`` int64 id of the sample each row came from (its position in the
            ``ids`` passed to the extractor, by default its position in the loader), so
            that rows extracted on several processes can be put back in one order.
    """

    features: dict[str, Tensor]
    labels: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` from a batch: a ``(x, y, ...)`` tuple/list or a dict with keys such as
    ``x``/``image``/``input`` and ``y``/``label``/``target``/``mask``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
    raise ValueError(
        f"cannot find (inputs, labels) in a batch of type {type(batch).__name__}; batches must be "
        f"(x, y) tuples or dicts with keys {list(_INPUT_KEYS)} and {list(_LABEL_KEYS)}, or pass "
        "`unpack=` a function batch -> (x, y)."
    )


def batch_ids(ids: Tensor | None, start: int, size: int) -> Tensor:
    """The ``(size,)`` ids of the samples ``start .. start+size-1`` in loader order: ``ids[start:start+size]``,
    or those positions themselves when ``ids`` is ``None``; ``ValueError`` if ``ids`` is too short."""
    if ids is None:
        return torch.arange(start, start + size, dtype=torch.int64)
    if start + size > ids.numel():
        raise ValueError(f"`ids` has {ids.numel()} entries but the loader yields more samples; pass one id per sample.")
    return ids[start : start + size]


def integer_labels(y: Tensor, name: str) -> Tensor:
    """``y`` as int64 class ids; ``ValueError`` naming ``name`` if it holds non-integer values."""
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError(
                f"`{name}` holds non-integer values; pass integer class ids (a mask of 0/1 or class indices)."
            )
    return y.to(torch.int64)


def run_batches(
    loader: Iterable[Any],
    cap: LayerCapture,
    unpack: Unpack,
    device: torch.device | str | None,
    forward: Callable[[nn.Module, Tensor], Any] | None,
) -> Iterator[Tensor]:
    """Yield each batch's labels after ``cap``'s model has run on its inputs (outputs in ``cap``);
    checks that every hooked layer ran exactly once (:meth:`LayerCapture.check_ran_once`)."""
    for batch in loader:
        x, y = unpack(batch)
        if device is not None:
            x = x.to(device, non_blocking=True)
        cap.run(x, forward)
        cap.check_ran_once()
        yield torch.as_tensor(y)


def dataset_labels(dataset: Any) -> Tensor | None:
    """The ``(N,)`` labels of a map-style dataset without reading its inputs, when it exposes them
    (``targets`` / ``labels`` attributes, a ``TensorDataset``'s second tensor, a ``Subset`` of
    those); ``None`` otherwise."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        second = dataset.tensors[1]
        return second.reshape(-1) if second.ndim == 1 or (second.ndim == 2 and second.shape[1] == 1) else None
    for attr in ("targets", "labels"):
        y = getattr(dataset, attr, None)
        if y is not None and not callable(y):
            try:
                t = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                continue
            if t.ndim == 1 and not t.is_floating_point():
                return t.to(torch.int64)
    return None


def _stratified(labels: Tensor, max_samples: int, seed: int) -> Tensor:
    from tguide.metrics._subset import stratified_subset

    return stratified_subset(labels, max_samples, seed).cpu()


def stratified_loader(loader: Any, max_samples: int | None, seed: int) -> tuple[Any, Tensor | None]:
    """``(loader over the stratified subset, its dataset positions)`` when the subset can be drawn
    up front (a DataLoader over a map-style dataset that exposes its labels, :func:`dataset_labels`),
    else ``(loader, None)``: the caller then subsamples the rows after reading them all."""
    from torch.utils.data import DataLoader, IterableDataset, Subset

    if max_samples is None or not isinstance(loader, DataLoader):
        return loader, None
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return loader, None
    labels = dataset_labels(dataset)
    if labels is None or labels.numel() != len(dataset):
        return loader, None
    if labels.numel() <= max_samples:
        return loader, torch.arange(labels.numel())
    keep = _stratified(labels, max_samples, seed)
    sub = DataLoader(
        Subset(dataset, keep.tolist()),
        batch_size=loader.batch_size or 64,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )
    return sub, keep


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str] | str,
    *,
    pool: PoolSpec = "avg",
    max_samples: int | None = None,
    seed: int = 0,
    ids: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    progress: bool | str = False,
) -> FeatureSet:
    """Run ``model`` over ``loader`` (eval mode, no grad) and return each layer's features.

    Args:
        model: any ``nn.Module``; its mode is restored afterwards (per submodule).
        loader: iterable of batches (a DataLoader); see ``unpack``.
        layers: module names from ``model.named_modules()``, ``OUTPUT`` (``"@output"``) for
            the model's output, or ``"auto"`` (:func:`tguide.features.layers.auto_layers`). A typo
            suggests the closest names.
        pool: per-layer reduction: a name of :data:`tguide.features.pooling.POOLS`, a callable
            ``output -> (B, D)``, or a dict ``{layer: pool}`` (``"*"``: default for the others); see
            :func:`tguide.features.pooling.reduce_output`.
        max_samples: a seeded (``seed``), class-stratified random subset of this many samples
            (every class keeps one at least; ``tguide.metrics._subset.stratified_subset``). For a
            DataLoader whose dataset exposes its labels only the subset is read; otherwise every
            sample is run and the rows are subsampled afterwards. ``None``: every sample.
        seed: seed of the ``max_samples`` draw.
        ids: one int id per sample in loader order (default ``0..N-1``), returned in ``ids``
            (for the subset: the ids of the rows kept).
        device: move inputs there (default: leave them where the loader puts them).
        unpack: ``batch -> (x, y)``; default :func:`default_unpack`.
        forward: ``(model, x) -> anything``; default ``model(x)``.
        progress: show a tqdm bar over the batches (a string is its description).

    Returns:
        :class:`FeatureSet` with ``features[layer] (N, D)``, ``labels (N,)`` int64 and ``ids (N,)``.
    """
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(f"`max_samples` must be ≥ 1 or None, got {max_samples}.")
    unpack = unpack or default_unpack
    id_tensor = torch.as_tensor(ids, dtype=torch.int64).flatten() if ids is not None else None
    loader, positions = stratified_loader(loader, max_samples, seed)
    if positions is not None and id_tensor is not None:
        if id_tensor.numel() < int(positions.max()) + 1:
            raise ValueError(
                f"`ids` has {id_tensor.numel()} entries but the loader yields more samples; pass one id per sample."
            )
        id_tensor = id_tensor[positions]
    elif positions is not None:
        id_tensor = positions
    chunks: dict[str, list[Tensor]] = {}
    labels: list[Tensor] = []
    seen = 0
    batches: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        batches = tqdm(
            loader,
            total=total,
            desc=progress if isinstance(progress, str) else "features",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )
    with LayerCapture(model, layers, pool=pool) as cap, eval_mode(model), torch.no_grad():
        for y in run_batches(batches, cap, unpack, device, forward):
            if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
                raise ValueError(
                    f"labels of a batch have shape {tuple(y.shape)}; image-level features need one class id "
                    "per sample (B,). For segmentation masks use extract_pixel_features."
                )
            b = y.shape[0]
            for name, out in cap.outputs.items():
                if out.shape[0] != b:
                    raise ValueError(
                        f"layer {name!r} output has {out.shape[0]} rows for a batch of {b}; hook a layer "
                        "that keeps the batch axis first."
                    )
                if out.ndim != 2:
                    raise ValueError(
                        f"layer {name!r} output has shape {tuple(out.shape)}; pass a pool that "
                        "reduces it to (B, D): 'avg', 'cls', 'mean', 'channels_last' or 'flatten'."
                    )
                chunks.setdefault(name, []).append(out)
            labels.append(integer_labels(y.reshape(-1), "labels"))
            seen += b
    if progress and hasattr(batches, "close"):
        batches.close()
    if seen == 0:
        raise ValueError("`loader` yielded no samples; pass a non-empty probe loader.")
    lab = torch.cat(labels).cpu()
    feats = {name: torch.cat(chunks[name]) for name in cap.modules}
    row_ids = batch_ids(id_tensor, 0, seen)
    if max_samples is not None and positions is None and seen > max_samples:
        keep = _stratified(lab, max_samples, seed)
        feats = {name: f[keep.to(f.device)] for name, f in feats.items()}
        lab, row_ids = lab[keep], row_ids[keep]
    return FeatureSet(features=feats, labels=lab.to(next(iter(feats.values())).device), ids=row_ids)
