"""Transferability metrics: pure functions on tensors, and their torchmetrics classes.

Every score is higher = more transferable, computed in float64 on the input's device.

Functional: :func:`hscore`, :func:`hscore_shrinkage`, :func:`transrate`,
:func:`transrate_layers`, :func:`leep`, :func:`nce`, :func:`logme`, :func:`otce`
(→ :class:`OTCEResult`), :func:`otce_sim`, :func:`fit_otce_weights`.
Stateful (DDP-aware, ``update``/``compute``): :class:`HScore`, :class:`HScoreShrinkage`,
:class:`TransRate`, :class:`LEEP`, :class:`NCE`, :class:`LogME`, :class:`OTCE`, all
subclasses of :class:`FeatureMetric`.
"""

from tguide.metrics.hscore import hscore, hscore_shrinkage, ledoit_wolf_shrinkage
from tguide.metrics.leep import leep, nce
from tguide.metrics.logme import LogMEConvergenceWarning, LogMEUnboundedWarning, logme
from tguide.metrics.otce import (
    OTCEConvergenceWarning,
    OTCEResult,
    fit_otce_weights,
    otce,
    otce_coupling,
    otce_sim,
    task_distance,
)
from tguide.metrics.stateful import NCE, OTCE, FeatureMetric, HScore, HScoreShrinkage, LEEP, LogME, TransRate
from tguide.metrics.transrate import coding_rate, transrate, transrate_layers

__all__ = [
    # functional
    "hscore",
    "hscore_shrinkage",
    "ledoit_wolf_shrinkage",
    "transrate",
    "transrate_layers",
    "coding_rate",
    "leep",
    "nce",
    "logme",
    "otce",
    "otce_sim",
    "otce_coupling",
    "task_distance",
    "fit_otce_weights",
    "OTCEResult",
    # warnings
    "OTCEConvergenceWarning",
    "LogMEConvergenceWarning",
    "LogMEUnboundedWarning",
    # stateful
    "FeatureMetric",
    "HScore",
    "HScoreShrinkage",
    "TransRate",
    "LogME",
    "LEEP",
    "NCE",
    "OTCE",
]
