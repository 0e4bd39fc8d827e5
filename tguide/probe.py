"""Transferability of a probe set, per layer: the Trainer-free core of the transferability callback.

:func:`transferability_scores` scores every metric of :data:`METRICS` on every named layer for a
fixed probe subset:

1. draws a fixed probe subset (seeded, the same every call) of the target loader and, for
   OTCE, of the source loader; under DDP every rank reads its share of it;
2. runs the model in eval mode under ``torch.no_grad()`` and captures the named layers with
   forward hooks (:mod:`tguide.features`, :mod:`tguide.pixel_features`); the previous
   train/eval mode of every submodule is restored;
3. gathers every rank's rows (``all_gather`` with padding, so unequal shares do not hang)
   and puts them back in the one-process order;
4. rank 0 calls the functions of :mod:`tguide.metrics` (no formula lives here) and
   broadcasts the scores, so that every rank returns the same numbers.

:class:`tguide.callbacks.TransferabilityMonitor` calls it every few epochs.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from tguide.features import FeatureSet, Unpack, extract_features, resolve_layers
from tguide.pixel_features import extract_pixel_features

__all__ = ["METRICS", "DEFAULT_METRIC_KWARGS", "MetricSpec", "resolve_metric", "transferability_scores"]


@dataclass(frozen=True)
class MetricSpec:
    """A registry entry: ``target`` is ``"module:function"`` in :mod:`tguide.metrics`, imported
    when first used; ``needs_source`` marks metrics called as ``f(src_f, src_y, tgt_f, tgt_y)``
    instead of ``f(tgt_f, tgt_y)``."""

    target: str
    needs_source: bool = False

    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


METRICS: dict[str, MetricSpec] = {
    "otce_sim": MetricSpec("tguide.metrics.otce:otce_sim", needs_source=True),
    "hscore": MetricSpec("tguide.metrics.hscore:hscore"),
    "hscore_shrinkage": MetricSpec("tguide.metrics.hscore:hscore_shrinkage"),
    "transrate": MetricSpec("tguide.metrics.transrate:transrate"),
    "transrate_comparable": MetricSpec("tguide.metrics.transrate:transrate_comparable"),
    "logme": MetricSpec("tguide.metrics.logme:logme"),
}


# Exact OT is quadratic in the samples (5k × 5k: ~10 s on a CPU core): by default OTCE scores a
# seeded subsample of 1000 per side (otce_sim's own `max_samples`); override in `metric_kwargs`.
DEFAULT_METRIC_KWARGS: dict[str, dict[str, Any]] = {"otce_sim": {"max_samples": 1000}}


def resolve_metric(name: str) -> MetricSpec:
    """The registry entry for ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in METRICS:
        raise ValueError(f"`metrics`: unknown metric {name!r}; valid names: {', '.join(METRICS)}.")
    return METRICS[name]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _probe_share(loader: DataLoader, max_samples: int | None, seed: int, rank: int, world: int,
                 what: str) -> tuple[DataLoader, Tensor]:
    """This rank's share of a fixed probe subset of ``loader.dataset``: ``(loader, dataset ids)``.

    The subset is ``max_samples`` indices drawn with a private seeded generator (all of them
    when ``None``), sorted; rank ``r`` of ``world`` reads positions ``r, r+world, ...``. The
    loader does not shuffle and owns its generator, so probing never draws from the global RNG
    (training with and without the monitor sees the same random numbers).
    """
    if not isinstance(loader, DataLoader):
        raise ValueError(f"`{what}` must give a torch DataLoader, got {type(loader).__name__}.")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(f"`{what}`: the loader's dataset must be map-style (with __len__ and indexing), "
                         f"not {type(dataset).__name__}, so that a fixed probe subset can be drawn.")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"`{what}`: the loader's dataset is empty.")
    gen = torch.Generator().manual_seed(int(seed))
    if max_samples is None or max_samples >= n:
        ids = torch.arange(n)
    else:
        ids = torch.sort(torch.randperm(n, generator=gen)[:max_samples]).values
    ids = ids[rank::world]
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 64
    share = DataLoader(Subset(dataset, ids.tolist()), batch_size=batch_size, shuffle=False,
                       num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                       pin_memory=loader.pin_memory, generator=torch.Generator().manual_seed(int(seed)))
    return share, ids


def _gather(fs: FeatureSet | None, layers: Sequence[str], world: int) -> FeatureSet | None:
    """Concatenate every rank's rows (empty shares allowed) and sort them by sample id (stable),
    which is the order one process would have read them in."""
    if world == 1:
        return fs
    from torchmetrics.utilities.distributed import gather_all_tensors

    def cat(local: Tensor) -> Tensor:
        parts = [p for p in gather_all_tensors(local) if p.numel() > 0]
        return torch.cat(parts) if parts else local

    device = next(iter(fs.features.values())).device if fs is not None else _device_for_backend()
    ids = cat(fs.ids.to(device) if fs is not None else torch.empty(0, dtype=torch.int64, device=device))
    labels = cat(fs.labels.to(device) if fs is not None else torch.empty(0, dtype=torch.int64, device=device))
    order = torch.sort(ids, stable=True).indices
    features = {}
    for name in layers:  # float64 on the wire: dtypes must match across ranks, empty ones included
        local = fs.features[name].double() if fs is not None else torch.empty(0, 0, dtype=torch.float64, device=device)
        features[name] = cat(local)[order]
    return FeatureSet(features=features, labels=labels[order], ids=ids[order])


def _device_for_backend() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _extract(model: nn.Module, share: DataLoader, ids: Tensor, layers: Sequence[str], pool: str,
             pixels_per_image: int | None, ignore_index: int | None, seed: int, device: Any,
             unpack: Unpack | None, pixel_sampling: Mapping[str, Any] | None = None) -> FeatureSet | None:
    if len(ids) == 0:  # this rank's share is empty (fewer probe samples than ranks)
        return None
    if pixels_per_image is not None:
        return extract_pixel_features(model, share, layers, pixels_per_image=pixels_per_image,
                                      ignore_index=ignore_index, seed=seed, ids=ids, device=device, unpack=unpack,
                                      **dict(pixel_sampling or {}))
    return extract_features(model, share, layers, pool=pool, ids=ids, device=device, unpack=unpack)


def _compute(target: FeatureSet, source: FeatureSet | None, layers: Sequence[str], metrics: Sequence[str],
             metric_kwargs: Mapping[str, Mapping[str, Any]], null: int | None = None,
             seed: int = 0) -> dict[str, float]:
    from tguide.metrics.null import label_shuffle_null

    scores: dict[str, float] = {}
    for metric in metrics:
        spec = resolve_metric(metric)
        fn, kwargs = spec.function(), {**DEFAULT_METRIC_KWARGS.get(metric, {}), **metric_kwargs.get(metric, {})}
        for layer in layers:
            if spec.needs_source:
                assert source is not None
                args = (source.features[layer], source.labels, target.features[layer], target.labels)
            else:
                args = (target.features[layer], target.labels)
            try:
                if null is None:
                    value = fn(*args, **kwargs)
                else:
                    calibrated = label_shuffle_null(fn, *args, n_perm=null, seed=seed, **kwargs)
                    value = calibrated.score
                    scores[f"transfer/{metric}_z/{layer}"] = float(calibrated.z)
            except ValueError as err:
                raise ValueError(f"TransferabilityMonitor: {metric} on layer {layer!r} failed: {err}") from err
            scores[f"transfer/{metric}/{layer}"] = float(getattr(value, "score", value))
    return scores


def transferability_scores(
    model: nn.Module,
    probe: DataLoader,
    layers: Sequence[str],
    metrics: Sequence[str] = ("otce_sim", "hscore", "transrate"),
    source: DataLoader | None = None,
    *,
    pool: str = "avg",
    max_samples: int | None = 1000,
    source_max_samples: int | None = 1000,
    seed: int = 0,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    pixels_per_image: int | None = None,
    ignore_index: int | None = None,
    pixel_sampling: Mapping[str, Any] | None = None,
    null: int | None = None,
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    on_error: str = "raise",
) -> dict[str, float]:
    """Score every ``metric`` on every layer for a fixed probe subset; ``{"transfer/<metric>/<layer>": score}``.

    Works in one process or in every process of an initialised ``torch.distributed`` group
    (call it on all ranks): each rank extracts its share, the rows are gathered, rank 0
    computes and broadcasts, and all ranks return the same dict, equal to the one-process
    result. ``max_samples`` and ``source_max_samples`` cap the probe and source subsets (``None``
    = all), drawn with ``seed`` and ``seed + 1``; ``metric_kwargs`` go to the metric functions,
    over :data:`DEFAULT_METRIC_KWARGS`. ``pixels_per_image`` switches to per-pixel features of
    segmentation masks (:func:`tguide.features.extract_pixel_features`), with ``pixel_sampling``
    as its extra keyword arguments (e.g. ``{"sampling": "boundary", "band": 3}``). ``null=P``
    also scores ``P`` shuffles of the probe labels (:func:`tguide.metrics.null.label_shuffle_null`,
    seeded by ``seed``) and adds ``transfer/<metric>_z/<layer>``, the score's z against that null
    (comparable across layers, widths and metrics). With
    ``on_error="warn"`` a metric that raises ``ValueError`` gives NaN scores and a warning
    instead of an error (on every rank).
    """
    metrics = list(metrics)
    for metric in metrics:
        resolve_metric(metric)
    if on_error not in ("raise", "warn"):
        raise ValueError(f"`on_error` must be 'raise' or 'warn', got {on_error!r}.")
    if any(resolve_metric(m).needs_source for m in metrics) and source is None:
        needing = [m for m in metrics if resolve_metric(m).needs_source]
        raise ValueError(f"`source`: {needing} compare source and target features; pass source= "
                         "(a loader of source samples) or drop them from `metrics`.")
    layers = list(resolve_layers(model, layers))
    rank, world = _world()
    share, ids = _probe_share(probe, max_samples, seed, rank, world, "probe")
    target = _extract(model, share, ids, layers, pool, pixels_per_image, ignore_index, seed, device, unpack,
                      pixel_sampling)
    src = None
    if source is not None and any(resolve_metric(m).needs_source for m in metrics):
        share, ids = _probe_share(source, source_max_samples, seed + 1, rank, world, "source")
        src = _extract(model, share, ids, layers, pool, pixels_per_image, ignore_index, seed + 1, device, unpack,
                       pixel_sampling)
        src = _gather(src, layers, world)
    target = _gather(target, layers, world)
    payload: dict[str, Any] = {"scores": {}, "error": None}
    if rank == 0:
        assert target is not None
        try:
            payload["scores"] = _compute(target, src, layers, metrics, metric_kwargs or {}, null, seed)
        except ValueError as err:
            payload["error"] = str(err)
    if world > 1:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if payload["error"] is not None:
        if on_error == "raise":
            raise ValueError(payload["error"])
        warnings.warn(payload["error"], RuntimeWarning, stacklevel=2)
        keys = [f"transfer/{m}/{layer}" for m in metrics for layer in layers]
        if null is not None:
            keys += [f"transfer/{m}_z/{layer}" for m in metrics for layer in layers]
        return {key: float("nan") for key in keys}
    return payload["scores"]
