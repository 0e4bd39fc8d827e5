"""Lightning callbacks of tguide (installed as ``tguide.callbacks``)."""

from tguide.callbacks.transferability import (
    DEFAULT_METRIC_KWARGS,
    METRICS,
    MetricSpec,
    TransferabilityMonitor,
    resolve_metric,
    transferability_scores,
)

__all__ = [
    "DEFAULT_METRIC_KWARGS",
    "METRICS",
    "MetricSpec",
    "TransferabilityMonitor",
    "resolve_metric",
    "transferability_scores",
]
