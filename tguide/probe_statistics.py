"""The statistics path of the probe: scores of merged sufficient statistics, no feature gather.

For a score whose registry entry names a statistics type (:attr:`MetricInfo.statistics`:
H-score, shrinkage H-score, TransRate in both forms, LogME, GBC without PCA, NCE without
correction) every process builds the statistics of its own share of the probe rows
(:meth:`~tguide.metrics.statistics.Statistics.from_samples`), the processes exchange those
(:meth:`~tguide.metrics.statistics.Statistics.to_tensors`, a few D×D matrices instead of N×D
features), every process merges them by label value in rank order (label sets may differ by
rank) and the score is :meth:`MetricInfo.from_statistics` of the merged statistics: the
functional computes the same formula on the statistics of all rows at once, so the two agree
to rounding. Scores that need the samples (OTCE, SFDA, NCTI, ETran, kNN, LEEP, ...), keyword
arguments the statistics function does not take (GBC's ``pca_dim``, NCE's ``correction``) and
the label-shuffle null (it shuffles labels across all rows) keep the feature gather of
:mod:`tguide.probe`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tguide.features.extract import FeatureSet
from tguide.features.layers import OUTPUT
from tguide.metrics.registry import METRICS, MetricInfo
from tguide.metrics.statistics import Statistics

__all__ = [
    "StatisticsKey",
    "gather_errors",
    "local_statistics",
    "merge_across_ranks",
    "source_probabilities",
    "statistics_key",
    "uses_statistics",
]

# (statistics type "module:attr", layer, input: "features" | "probs" | "labels")
StatisticsKey = tuple[str, str, str]


def source_probabilities(logits: Tensor, metric: str) -> Tensor:
    """Source-class probabilities from the model's output ``(N, Cs)`` logits (LEEP, NCE)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"{metric} reads the model's output as source-class logits (N, Cs), but it has shape "
            f"{tuple(logits.shape)}; use it on a classifier with a head, or drop it from `metrics`."
        )
    return torch.softmax(logits.double(), dim=1)


def uses_statistics(info: MetricInfo, kwargs: Mapping[str, Any], null: int | None) -> bool:
    """Whether ``info`` is scored from merged statistics: it has a statistics type, it compares
    no source samples, no null is asked for, and its ``<function>_from_statistics`` takes every
    keyword in ``kwargs``."""
    if info.statistics is None or info.needs_source_samples or null is not None or not isinstance(info.function, str):
        return False
    module, attr = info.function.split(":")
    fn = getattr(importlib.import_module(module), attr + "_from_statistics", None)
    if fn is None:
        return False
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(k in params for k in {**info.default_kwargs, **kwargs})


def statistics_key(info: MetricInfo, layer: str) -> StatisticsKey:
    """The statistics ``info`` reads on ``layer`` (metrics with equal keys share one object)."""
    assert info.statistics is not None
    return (info.statistics, layer, info.source_input if info.needs_source_probs else "features")


def _inputs(target: FeatureSet, info: MetricInfo, layer: str) -> tuple[Any, ...]:
    if info.needs_source_probs:
        probs = source_probabilities(target.features[OUTPUT], info.name)
        return info.arguments(labels=target.labels, source_probs=probs)
    return info.arguments(features=target.features[layer], labels=target.labels)


def local_statistics(
    target: FeatureSet | None, wanted: Sequence[tuple[str, str]]
) -> tuple[dict[StatisticsKey, Statistics], ValueError | None]:
    """This process's statistics for every ``(metric, layer)`` of ``wanted``: ``(by key, first error)``.

    An empty share (``target`` None) gives empty statistics; a share that fails to build (e.g. NaN
    features) gives empty statistics too and the error, so that every process still takes part in
    the exchange (and none hangs) and the caller raises it afterwards.
    """
    out: dict[StatisticsKey, Statistics] = {}
    error: ValueError | None = None
    for metric, layer in wanted:
        info = METRICS[metric]
        key = statistics_key(info, layer)
        if key in out:
            continue
        kind: type[Statistics] | None = info.load_statistics()
        assert kind is not None
        if target is None:
            out[key] = kind()
            continue
        try:
            out[key] = kind.from_samples(*_inputs(target, info, layer))
        except ValueError as err:
            out[key] = kind()
            if error is None:
                error = ValueError(f"TransferabilityMonitor: {metric} on layer {layer!r} failed: {err}")
    return out, error


def merge_across_ranks(
    local: Mapping[StatisticsKey, Statistics], world: int, device: torch.device | None = None
) -> dict[StatisticsKey, Statistics]:
    """Every process's statistics merged, in rank order, on every process (call it on all ranks,
    with the same keys). Each tensor of :meth:`Statistics.to_tensors` is gathered with padding,
    so unequal shares and empty ones do not hang; ``device`` is where the tensors travel
    (the process group's backend device)."""
    if world == 1:
        return dict(local)
    from torchmetrics.utilities.distributed import gather_all_tensors

    out: dict[StatisticsKey, Statistics] = {}
    for key in sorted(local):
        stats = local[key]
        kind = type(stats)
        dtypes = {name: dtype for name, _, dtype in stats.state_names()}
        per_rank: list[dict[str, Tensor]] = [{} for _ in range(world)]
        for name, tensor in stats.to_tensors().items():
            wire = tensor.to(device=device, dtype=dtypes[name]).contiguous()
            for r, part in enumerate(gather_all_tensors(wire)):
                per_rank[r][name] = part
        merged = kind()
        for tensors in per_rank:
            merged = merged.merge(kind.from_tensors(tensors))
        out[key] = merged
    return out


def gather_errors(error: ValueError | None, world: int) -> ValueError | None:
    """The first error of any process (in rank order), on every process."""
    if world == 1:
        return error
    boxes: list[Any] = [None] * world
    dist.all_gather_object(boxes, None if error is None else str(error))
    first = next((msg for msg in boxes if msg is not None), None)
    return None if first is None else ValueError(first)
