"""Calibrated scores as extra rows of the metric-quality benchmark.

    TGUIDE_DATA=../shared/data .venv/bin/python -m tguide.studies.metric_quality \
        --extra-scores tguide/studies/metric_quality/calibrated.py

Adds, per (source, target, layer):

- ``<metric>_z``: the z-score of the metric against 100 shuffles of the target labels
  (:func:`tguide.metrics.label_shuffle_null`, seed 0), for every metric of the registry;
- ``otce_sim_null``, ``nce_null``: the ``correction="null"`` scores (score − null mean);
- ``otce_sim_mm``, ``nce_mm``: the Miller–Madow corrections;
- ``transrate_comparable``: the width-comparable TransRate (rank 32, ε = 0.1 relative).

The ``_null`` score and the ``_z`` score of one metric share one null (memoised on the pair):
the first of them pays its time, so the cost of ``null=100`` is the time of ``<metric>_z``
or ``<metric>_null``, whichever comes first in the registry (the ``_z`` entries are registered
first, so their time is the calibrated cost). Nothing here is tuned on the evaluation pairs:
n_perm = 100 and rank = 32 are fixed a priori.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tguide import metrics as M
from tguide.studies.metric_quality.scores import PairInputs, register

N_PERM = 100


def _null(p: PairInputs, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> M.NullCalibrated:
    key = f"null:{name}"
    if key not in p.memo:
        p.memo[key] = M.label_shuffle_null(fn, *args, n_perm=N_PERM, seed=0, **kwargs)
    return p.memo[key]


FEATURE_METRICS: dict[str, Callable[..., Any]] = {
    "hscore": M.hscore,
    "hscore_shrinkage": M.hscore_shrinkage,
    "transrate": M.transrate,
    "transrate_comparable": M.transrate_comparable,
    "logme": M.logme,
}


def _feature_z(name: str, fn: Callable[..., Any]) -> None:
    @register(f"{name}_z")
    def score(p: PairInputs) -> float:
        return float(_null(p, name, fn, p.features, p.labels).z)


for _name, _fn in FEATURE_METRICS.items():
    _feature_z(_name, _fn)


@register("leep_z", layer_free=True)
def _leep_z(p: PairInputs) -> float:
    return float(_null(p, "leep", M.leep, p.source_probs, p.labels).z)


@register("nce_z", layer_free=True)
def _nce_z(p: PairInputs) -> float:
    return float(_null(p, "nce", M.nce, p.source_pred, p.labels).z)


@register("nce_null", layer_free=True)
def _nce_null(p: PairInputs) -> float:
    return float(_null(p, "nce", M.nce, p.source_pred, p.labels).corrected)


@register("nce_mm", layer_free=True)
def _nce_mm(p: PairInputs) -> float:
    return float(M.nce(p.source_pred, p.labels, correction="miller_madow"))


def _otce_null(p: PairInputs) -> M.OTCEResult:
    if "otce_null" not in p.memo:
        p.memo["otce_null"] = M.otce(
            p.source_features,
            p.source_labels,
            p.features,
            p.labels,
            solver="emd",
            correction="null",
            n_perm=N_PERM,
            seed=0,
        )
    return p.memo["otce_null"]


@register("otce_sim_z")
def _otce_sim_z(p: PairInputs) -> float:
    return float(_otce_null(p).null.z)


@register("otce_sim_null")
def _otce_sim_null(p: PairInputs) -> float:
    return float(_otce_null(p).score)


@register("otce_sim_mm")
def _otce_sim_mm(p: PairInputs) -> float:
    return float(
        M.otce(p.source_features, p.source_labels, p.features, p.labels, solver="emd", correction="miller_madow").score
    )


@register("transrate_comparable")
def _transrate_comparable(p: PairInputs) -> float:
    return float(M.transrate_comparable(p.features, p.labels))
