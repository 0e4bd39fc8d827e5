"""Stateful (torchmetrics) versions of the transferability metrics.

:mod:`~tguide.metrics.stateful.base` (:class:`FeatureMetric`: sample states, reservoir, null),
:mod:`~tguide.metrics.stateful.streaming` (the statistics-backed classes: exact streaming, DDP
by merging statistics) and :mod:`~tguide.metrics.stateful.samples` (LEEP and OTCE, which need
the samples).
"""

from __future__ import annotations

from tguide.metrics.stateful.base import FeatureMetric
from tguide.metrics.stateful.samples import LEEP, OTCE
from tguide.metrics.stateful.streaming import (
    GBC,
    NCE,
    HScore,
    HScoreShrinkage,
    LogME,
    StreamingMetric,
    TransRate,
    TransRateComparable,
)

__all__ = [
    "FeatureMetric",
    "StreamingMetric",
    "HScore",
    "HScoreShrinkage",
    "TransRate",
    "TransRateComparable",
    "LogME",
    "GBC",
    "LEEP",
    "NCE",
    "OTCE",
]
