"""Lightning callbacks of tguide (installed as ``tguide.callbacks``)."""

from tguide.callbacks.invariance import InvarianceMonitor, per_class_ekld
from tguide.callbacks.transferability import (
    DEFAULT_METRIC_KWARGS,
    TransferabilityMonitor,
    resolve_metric,
    transferability_scores,
)

__all__ = [
    "InvarianceMonitor",
    "per_class_ekld",
    "DEFAULT_METRIC_KWARGS",
    "TransferabilityMonitor",
    "resolve_metric",
    "transferability_scores",
]
