"""Transferability metrics: pure functions on tensors, and their torchmetrics classes.

Every score is higher = more transferable, computed in float64 on the input's device.

Functional: :func:`hscore`, :func:`hscore_shrinkage`, :func:`transrate`,
:func:`transrate_comparable` (width- and scale-comparable), :func:`transrate_layers`,
:func:`leep`, :func:`nce`, :func:`logme`, :func:`otce` (→ :class:`OTCEResult`),
:func:`otce_sim`, :func:`fit_otce_weights`.
Calibration: :func:`label_shuffle_null` (→ :class:`NullCalibrated`: z-score, p-value and the
bias-corrected score against label shuffles), and ``correction="null"|"miller_madow"`` of
:func:`otce` / :func:`otce_sim` / :func:`nce`.
Stateful (DDP-aware, ``update``/``compute``, ``null=P`` for calibrated output):
:class:`HScore`, :class:`HScoreShrinkage`, :class:`TransRate`, :class:`TransRateComparable`,
:class:`LEEP`, :class:`NCE`, :class:`LogME`, :class:`OTCE`, all subclasses of :class:`FeatureMetric`.
Denoising (seed 000): :func:`denoising_transferability` = exp(−SW₂(residual patches of A, of B)/s_A).
Invariance (seed 001; the one family where lower is better): :func:`ekld`, :func:`ekld_per_class`,
:class:`EKLD`.
"""

from tguide.metrics.denoising import (
    DenoisingTransferResult,
    denoiser_residuals,
    denoising_transferability,
    residual_distance,
    residual_patches,
    score_denoiser,
)
from tguide.metrics.hscore import hscore, hscore_shrinkage, ledoit_wolf_shrinkage
from tguide.metrics.invariance import EKLD, ekld, ekld_per_class, kl_rows
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
from tguide.metrics.null import NullCalibrated, calibrate, label_permutations, label_shuffle_null
from tguide.metrics.stateful import (
    NCE,
    OTCE,
    FeatureMetric,
    HScore,
    HScoreShrinkage,
    LEEP,
    LogME,
    TransRate,
    TransRateComparable,
)
from tguide.metrics.transrate import coding_rate, comparable_features, transrate, transrate_comparable, transrate_layers

__all__ = [
    # functional
    "hscore",
    "hscore_shrinkage",
    "ledoit_wolf_shrinkage",
    "transrate",
    "transrate_comparable",
    "comparable_features",
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
    # denoising transferability (seed 000)
    "denoising_transferability",
    "DenoisingTransferResult",
    "denoiser_residuals",
    "residual_distance",
    "residual_patches",
    "score_denoiser",
    # invariance (lower = more invariant)
    "ekld",
    "ekld_per_class",
    "kl_rows",
    "EKLD",
    # calibration
    "label_shuffle_null",
    "NullCalibrated",
    "calibrate",
    "label_permutations",
    # warnings
    "OTCEConvergenceWarning",
    "LogMEConvergenceWarning",
    "LogMEUnboundedWarning",
    # stateful
    "FeatureMetric",
    "HScore",
    "HScoreShrinkage",
    "TransRate",
    "TransRateComparable",
    "LogME",
    "LEEP",
    "NCE",
    "OTCE",
]
