"""Transferability of a probe set, per layer: the Trainer-free core of the transferability callback.

:func:`transferability_scores` scores metrics of the one registry
(:data:`tguide.metrics.registry.METRICS`, shared with model selection) on every named layer for
a fixed probe subset:

1. draws a fixed probe subset (seeded, the same every call) of the target loader and, for
   OTCE, of the source loader: ``max_samples`` is a class-stratified random subset
   (:func:`tguide.metrics._subset.stratified_subset`) whenever the dataset exposes its labels
   (:func:`tguide.features.extract.dataset_labels`), else a uniform one
   (:func:`tguide.probe_subset.probe_share`); under DDP every rank reads its share of it;
2. runs the model in eval mode under ``torch.no_grad()`` and captures the named layers with
   the one forward-hook capture (:mod:`tguide.features.extract`, :mod:`tguide.features.pixels`);
   the previous train/eval mode of every submodule is restored;
3. for the scores computed from sufficient statistics (H-score, LogME, TransRate, GBC, NCE:
   :mod:`tguide.probe_statistics`) every rank builds the statistics of its share and the
   ranks' statistics are merged, with no feature gather; for the scores that need the samples
   (OTCE, SFDA, NCTI, kNN, LEEP, ..., and every score under ``null``) every rank's rows are
   gathered (``all_gather`` with padding, so unequal shares do not hang) and put back in the
   one-process order;
4. rank 0 calls the functions of :mod:`tguide.metrics` (no formula lives here) and
   broadcasts the scores, so that every rank returns the same numbers.

:class:`tguide.callbacks.TransferabilityMonitor` calls it every few epochs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tguide.features.extract import FeatureSet, Unpack, extract_features
from tguide.features.layers import OUTPUT, resolve_layers
from tguide.features.pixels import extract_pixel_features
from tguide.features.pooling import PoolSpec
from tguide.metrics.registry import METRICS, MetricInfo
from tguide.metrics.statistics import Statistics
from tguide.probe_statistics import (
    StatisticsKey,
    gather_errors,
    local_statistics,
    merge_across_ranks,
    source_probabilities,
    statistics_key,
    uses_statistics,
)
from tguide.probe_subset import probe_share

__all__ = ["DEFAULT_METRIC_KWARGS", "resolve_metric", "check_metric_kwargs", "transferability_scores"]


# Exact OT is quadratic in the samples (5k × 5k: ~10 s on a CPU core): by default OTCE scores a
# seeded subsample of 1000 per side (otce_sim's own `max_samples`); override in `metric_kwargs`.
DEFAULT_METRIC_KWARGS: dict[str, dict[str, Any]] = {
    name: dict(info.default_kwargs) for name, info in METRICS.items() if info.default_kwargs
}


def resolve_metric(name: str) -> MetricInfo:
    """The entry of ``name`` in :data:`tguide.metrics.registry.METRICS`; ``ValueError`` listing the
    valid names otherwise (a configuration error, not a missing key)."""
    if name not in METRICS:
        raise ValueError(f"`metrics`: unknown metric {name!r}; valid names: {', '.join(METRICS)}.")
    return METRICS[name]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


def _extract(
    model: nn.Module,
    share: DataLoader,
    ids: Tensor,
    layers: Sequence[str],
    pool: PoolSpec,
    pixels_per_image: int | None,
    ignore_index: int | None,
    seed: int,
    device: Any,
    unpack: Unpack | None,
    pixel_sampling: Mapping[str, Any] | None = None,
) -> FeatureSet | None:
    if len(ids) == 0:  # this rank's share is empty (fewer probe samples than ranks)
        return None
    if pixels_per_image is not None:
        return extract_pixel_features(
            model,
            share,
            layers,
            pixels_per_image=pixels_per_image,
            ignore_index=ignore_index,
            seed=seed,
            ids=ids,
            device=device,
            unpack=unpack,
            **dict(pixel_sampling or {}),
        )
    return extract_features(model, share, layers, pool=pool, ids=ids, device=device, unpack=unpack)


def _metric_layers(spec: MetricInfo, layers: Sequence[str]) -> list[str]:
    """The layers ``spec`` is scored on: scores of the source head's predictions (LEEP, NCE) do not
    depend on a layer (one key, :data:`OUTPUT`); the others on every named layer."""
    return [OUTPUT] if spec.needs_source_probs else [lay for lay in layers if lay != OUTPUT]


def _compute(
    target: FeatureSet | None,
    source: FeatureSet | None,
    layers: Sequence[str],
    metrics: Sequence[str],
    metric_kwargs: Mapping[str, Mapping[str, Any]],
    null: int | None = None,
    seed: int = 0,
    statistics: Mapping[StatisticsKey, Statistics] | None = None,
    statistics_error: ValueError | None = None,
) -> dict[str, float]:
    """Every score, in ``metrics`` order: from the merged ``statistics`` for the metrics that have an
    entry there (:mod:`tguide.probe_statistics`; ``statistics_error`` is the first error met while
    building them), from the gathered features ``target``/``source`` for the others."""
    from tguide.metrics.null import label_shuffle_null

    scores: dict[str, float] = {}
    for metric in metrics:
        spec = resolve_metric(metric)
        fn, kwargs = spec.load(), {**DEFAULT_METRIC_KWARGS.get(metric, {}), **metric_kwargs.get(metric, {})}
        for layer in _metric_layers(spec, layers):
            key = statistics_key(spec, layer) if spec.statistics is not None else None
            if statistics is not None and key is not None and key in statistics:
                if statistics_error is not None:
                    raise statistics_error
                try:
                    value = spec.from_statistics(statistics[key], **metric_kwargs.get(metric, {}))
                except ValueError as err:
                    raise ValueError(f"TransferabilityMonitor: {metric} on layer {layer!r} failed: {err}") from err
                scores[f"transfer/{metric}/{layer}"] = float(value)
                continue
            assert target is not None
            if spec.needs_source_probs:
                probs = source_probabilities(target.features[OUTPUT], metric)
                args = spec.arguments(labels=target.labels, source_probs=probs)
            elif spec.needs_source_samples:
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


def _portable_error(err: BaseException) -> tuple[str, str, bytes | None]:
    """``(type name, message, pickled exception or None)``: what crosses ``broadcast_object_list``."""
    import pickle

    try:
        blob = pickle.dumps(err)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 (an exception that does not pickle travels as its text)
        blob = None
    return type(err).__name__, str(err), blob


def _rebuild_error(payload: tuple[str, str, bytes | None]) -> BaseException:
    import pickle

    name, message, blob = payload
    if blob is not None:
        try:
            return pickle.loads(blob)
        except Exception:  # noqa: BLE001
            pass
    return RuntimeError(f"{name}: {message}")


def check_metric_kwargs(metric_kwargs: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Check ``metric_kwargs`` against each metric function's signature (``inspect.signature``);
    :class:`tguide.errors.ConfigError` (a ``ValueError``) naming the valid keywords otherwise."""
    import inspect

    from tguide.errors import ConfigError

    data = {
        "features",
        "labels",
        "source_features",
        "source_labels",
        "target_features",
        "target_labels",
        "source_probs",
        "src_features",
        "src_labels",
        "tgt_features",
        "tgt_labels",
    }
    for metric, kwargs in (metric_kwargs or {}).items():
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"`metric_kwargs[{metric!r}]` must be a mapping of keyword arguments, got {kwargs!r}.")
        fn = resolve_metric(metric).load()
        params = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        valid = [
            n
            for n, p in params.items()
            if n not in data and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        wrong = [k for k in kwargs if k not in valid]
        if wrong:
            raise ConfigError(
                f"`metric_kwargs[{metric!r}]`: unknown keyword {', '.join(map(repr, wrong))} for "
                f"{getattr(fn, '__name__', metric)}; valid keywords: {', '.join(valid) or '(none)'}."
            )


def transferability_scores(
    model: nn.Module,
    probe: DataLoader,
    layers: Sequence[str],
    metrics: Sequence[str] = ("otce_sim", "hscore", "transrate"),
    source: DataLoader | None = None,
    *,
    pool: PoolSpec = "avg",
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

    Works in one process or in every process of an initialised ``torch.distributed`` group (call it on all ranks):
    each rank extracts its share, the statistics are merged or the rows gathered (see the module docstring), rank 0
    computes and broadcasts, and all ranks return the same dict, equal to the one-process result. ``max_samples``
    and ``source_max_samples`` cap the probe and source subsets (``None`` = all), drawn with ``seed`` and ``seed +
    1``: seeded, class-stratified random subsets when the datasets expose their labels, uniform ones otherwise (with
    a one-time warning) and in pixel mode, where they cap the images (see :func:`tguide.probe_subset.probe_share`);
    ``metric_kwargs`` go to the metric functions, over :data:`DEFAULT_METRIC_KWARGS`. ``pixels_per_image`` switches
    to per-pixel features of segmentation masks (:func:`tguide.features.pixels.extract_pixel_features`), with
    ``pixel_sampling`` as its extra keyword arguments (e.g. ``{"sampling": "boundary", "band": 3}``). ``null=P``
    also scores ``P`` shuffles of the probe labels (:func:`tguide.metrics.null.label_shuffle_null`, seeded by
    ``seed``) and adds ``transfer/<metric>_z/<layer>``, the score's z against that null (comparable across layers,
    widths and metrics). With ``on_error="warn"`` a metric that raises (any exception) gives NaN scores and a
    warning instead of an error, on every rank; with ``"raise"`` every rank raises rank 0's exception.
    """
    metrics = list(metrics)
    for metric in metrics:
        resolve_metric(metric)
    check_metric_kwargs(metric_kwargs)
    if on_error not in ("raise", "warn"):
        raise ValueError(f"`on_error` must be 'raise' or 'warn', got {on_error!r}.")
    if any(resolve_metric(m).needs_source_samples for m in metrics) and source is None:
        needing = [m for m in metrics if resolve_metric(m).needs_source_samples]
        raise ValueError(
            f"`source`: {needing} compare source and target features; pass source= "
            "(a loader of source samples) or drop them from `metrics`."
        )
    layers = list(resolve_layers(model, layers))
    if any(resolve_metric(m).needs_source_probs for m in metrics) and OUTPUT not in layers:
        layers.append(OUTPUT)  # the model's output = the source head's logits (LEEP, NCE)
    rank, world = _world()
    per_image = pixels_per_image is None  # stratify images by class; pixel mode draws images uniformly
    share, ids = probe_share(probe, max_samples, seed, rank, world, "probe", per_image)
    target = _extract(
        model, share, ids, layers, pool, pixels_per_image, ignore_index, seed, device, unpack, pixel_sampling
    )
    # statistics path (tguide.probe_statistics): each rank's statistics of its share, merged; no gather
    by_statistics = [m for m in metrics if uses_statistics(resolve_metric(m), (metric_kwargs or {}).get(m, {}), null)]
    wanted = [(m, layer) for m in by_statistics for layer in _metric_layers(resolve_metric(m), layers)]
    local, statistics_error = local_statistics(target, wanted)
    statistics = merge_across_ranks(local, world, _device_for_backend() if world > 1 else None)
    statistics_error = gather_errors(statistics_error, world)
    src = None
    if source is not None and any(resolve_metric(m).needs_source_samples for m in metrics):
        share, ids = probe_share(source, source_max_samples, seed + 1, rank, world, "source", per_image)
        src = _extract(
            model, share, ids, layers, pool, pixels_per_image, ignore_index, seed + 1, device, unpack, pixel_sampling
        )
        src = _gather(src, layers, world)
    if len(by_statistics) < len(metrics):  # sample path: every rank's rows
        target = _gather(target, layers, world)
    # fail-safe: rank 0 catches every exception while scoring and broadcasts (ok, payload), so
    # that every rank returns the same scores or raises the same error (never one rank hanging)
    ok: bool = True
    payload: Any = {}  # the scores, or the portable error when ok is False
    if rank == 0:
        try:
            payload = _compute(
                target, src, layers, metrics, metric_kwargs or {}, null, seed, statistics, statistics_error
            )
        except Exception as err:  # noqa: BLE001 (re-raised below, on every rank)
            ok, payload = False, _portable_error(err)
    if world > 1:
        box = [(ok, payload)]
        dist.broadcast_object_list(box, src=0)
        ok, payload = box[0]
    if not ok:
        error = _rebuild_error(payload)
        if on_error == "raise":
            raise error
        warnings.warn(f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
        pairs = [(m, layer) for m in metrics for layer in _metric_layers(resolve_metric(m), layers)]
        keys = [f"transfer/{m}/{layer}" for m, layer in pairs]
        if null is not None:
            keys += [f"transfer/{m}_z/{layer}" for m, layer in pairs]
        return {key: float("nan") for key in keys}
    return payload
