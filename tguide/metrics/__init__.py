"""Transferability metrics: pure functions on tensors, their torchmetrics classes, and nulls.

Every score here is higher = more transferable, computed in float64 on the input's device.

Scores (functional, one module each under :mod:`tguide.metrics.functional`):
:func:`hscore`, :func:`hscore_shrinkage`, :func:`transrate`, :func:`transrate_comparable`
(width- and scale-comparable), :func:`transrate_layers`, :func:`leep`, :func:`nce`,
:func:`logme`, :func:`otce` (→ :class:`OTCEResult`), :func:`otce_sim`, :func:`fit_otce_weights`.

Stateful (DDP-aware ``update``/``compute``, ``null=P`` for calibrated output), all subclasses
of :class:`FeatureMetric`: :class:`HScore`, :class:`HScoreShrinkage`, :class:`TransRate`,
:class:`TransRateComparable`, :class:`LEEP`, :class:`NCE`, :class:`LogME`, :class:`OTCE`.

Calibration: :func:`label_shuffle_null` (→ :class:`NullCalibrated`: z-score, p-value and the
bias-corrected score against label shuffles), and ``correction="null"|"miller_madow"`` of
:func:`otce` / :func:`otce_sim` / :func:`nce`.

Helpers (label permutations, coupling, coding rate, shrinkage, ...) stay in their modules,
e.g. :mod:`tguide.metrics.functional.otce`, :mod:`tguide.metrics.functional.permutation`.

Two other families live in their own modules and are not exported here, so that nobody ranks
models with them by mistake:

- :mod:`tguide.metrics.invariance`: eKLD (Zhou et al., ICLR 2022), how much a classifier's
  predictions change under a nuisance transformation; **lower** is more invariant.
- :mod:`tguide.metrics.denoising`: the transferability of a denoiser from one noise domain
  to another, from the distribution of its residuals.
"""

from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import leep, nce
from tguide.metrics.functional.logme import LogMEConvergenceWarning, LogMEUnboundedWarning, logme
from tguide.metrics.functional.otce import OTCEConvergenceWarning, OTCEResult, fit_otce_weights, otce, otce_sim
from tguide.metrics.functional.permutation import NullCalibrated
from tguide.metrics.functional.transrate import transrate, transrate_comparable, transrate_layers
from tguide.metrics.null import label_shuffle_null
from tguide.metrics.stateful import (
    LEEP,
    NCE,
    OTCE,
    FeatureMetric,
    HScore,
    HScoreShrinkage,
    LogME,
    TransRate,
    TransRateComparable,
)

# SFDA, NCTI, ETran, GBC, NLEEP and kNN are added here (one module each under
# tguide.metrics.functional, their names appended to the scores below).

__all__ = [
    # scores
    "hscore",
    "hscore_shrinkage",
    "transrate",
    "transrate_comparable",
    "transrate_layers",
    "leep",
    "nce",
    "logme",
    "otce",
    "otce_sim",
    "fit_otce_weights",
    # stateful
    "FeatureMetric",
    "HScore",
    "HScoreShrinkage",
    "TransRate",
    "TransRateComparable",
    "LEEP",
    "NCE",
    "LogME",
    "OTCE",
    # calibration
    "label_shuffle_null",
    "NullCalibrated",
    # result types
    "OTCEResult",
    # warnings
    "OTCEConvergenceWarning",
    "LogMEConvergenceWarning",
    "LogMEUnboundedWarning",
]
