"""Transferability metrics: pure functions on tensors, their torchmetrics classes, and nulls.

Every score here is higher = more transferable, computed in float64 on the input's device.

Scores (functional, one module each under :mod:`tguide.metrics.functional`):
:func:`hscore`, :func:`hscore_shrinkage`, :func:`transrate`, :func:`transrate_comparable`
(width- and scale-comparable), :func:`transrate_layers`, :func:`leep`, :func:`nce`,
:func:`logme`, :func:`otce` (→ :class:`OTCEResult`), :func:`otce_sim`, :func:`fit_otce_weights`,
:func:`sfda` (Shao et al., ECCV 2022), :func:`ncti` (Wang et al., ICCV 2023), :func:`etran`
(Gholami et al., ICCV 2023), :func:`gbc` (Pándy et al., CVPR 2022), :func:`nleep` (Li et al.,
CVPR 2021). NCTI and ETran are published min-max normalised across the model pool: their
``*_terms`` give one model's raw terms and ``*_pool`` combines a pool's terms.
Baselines a score must beat: :func:`knn_accuracy` (leave-one-out) and
:func:`linear_probe_accuracy` (cross-validated ridge probe).

One formula per score: the scores that need only sufficient statistics (H-score, shrinkage
H-score, LogME, TransRate and its comparable form, GBC, NCE; LEEP's joint table) have a
statistics type in :mod:`tguide.metrics.statistics` (``from_samples``/``update``/``merge``) and
one ``*_from_statistics`` function each; the functional, the class and the null all call it.

Stateful (DDP-aware ``update``/``compute``, ``null=P`` for calibrated output), all subclasses
of :class:`FeatureMetric` (:mod:`tguide.metrics.stateful`). Statistics-backed (memory
O(C·D²) whatever N, :class:`StreamingMetric`): :class:`HScore`, :class:`HScoreShrinkage`,
:class:`TransRate`, :class:`TransRateComparable`, :class:`LogME`, :class:`GBC`, :class:`NCE`.
Sample path: :class:`LEEP`, :class:`OTCE`. Large-N OTCE without the N×N coupling:
:func:`tguide.metrics.functional.otce_large.otce_large` (POT's lazy Sinkhorn).

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

from __future__ import annotations

import importlib
from typing import Any

# Every name is imported on first use (PEP 562), so that `import tguide.metrics` loads neither
# torchmetrics (the classes) nor POT (OTCE) nor anything heavier: see tests/test_light_import.py.
_LAZY = {
    "hscore": "tguide.metrics.functional.hscore",
    "hscore_shrinkage": "tguide.metrics.functional.hscore",
    "leep": "tguide.metrics.functional.leep",
    "nce": "tguide.metrics.functional.leep",
    "logme": "tguide.metrics.functional.logme",
    "LogMEConvergenceWarning": "tguide.metrics.functional.logme",
    "LogMEUnboundedWarning": "tguide.metrics.functional.logme",
    "otce": "tguide.metrics.functional.otce",
    "otce_sim": "tguide.metrics.functional.otce",
    "fit_otce_weights": "tguide.metrics.functional.otce",
    "OTCEResult": "tguide.metrics.functional.otce",
    "OTCEConvergenceWarning": "tguide.metrics.functional.otce",
    "NullCalibrated": "tguide.metrics.functional.permutation",
    "transrate": "tguide.metrics.functional.transrate",
    "transrate_comparable": "tguide.metrics.functional.transrate",
    "transrate_layers": "tguide.metrics.functional.transrate",
    "label_shuffle_null": "tguide.metrics.null",
    "sfda": "tguide.metrics.functional.sfda",
    "ncti": "tguide.metrics.functional.ncti",
    "ncti_terms": "tguide.metrics.functional.ncti",
    "ncti_pool": "tguide.metrics.functional.ncti",
    "NCTITerms": "tguide.metrics.functional.ncti",
    "etran": "tguide.metrics.functional.etran",
    "etran_terms": "tguide.metrics.functional.etran",
    "etran_pool": "tguide.metrics.functional.etran",
    "ETranTerms": "tguide.metrics.functional.etran",
    "gbc": "tguide.metrics.functional.gbc",
    "nleep": "tguide.metrics.functional.nleep",
    "knn_accuracy": "tguide.metrics.functional.knn",
    "linear_probe_accuracy": "tguide.metrics.functional.linear_probe",
    "otce_large": "tguide.metrics.functional.otce_large",
    "FeatureMetric": "tguide.metrics.stateful",
    "StreamingMetric": "tguide.metrics.stateful",
    "HScore": "tguide.metrics.stateful",
    "HScoreShrinkage": "tguide.metrics.stateful",
    "TransRate": "tguide.metrics.stateful",
    "TransRateComparable": "tguide.metrics.stateful",
    "LogME": "tguide.metrics.stateful",
    "GBC": "tguide.metrics.stateful",
    "LEEP": "tguide.metrics.stateful",
    "NCE": "tguide.metrics.stateful",
    "OTCE": "tguide.metrics.stateful",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "otce_large",
    "sfda",
    "ncti",
    "etran",
    "gbc",
    "nleep",
    # pool-normalised scores: per-model terms, normalised across the candidate pool
    "ncti_terms",
    "ncti_pool",
    "NCTITerms",
    "etran_terms",
    "etran_pool",
    "ETranTerms",
    # baselines a user could use instead of a score
    "knn_accuracy",
    "linear_probe_accuracy",
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
    "GBC",
    "StreamingMetric",
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
