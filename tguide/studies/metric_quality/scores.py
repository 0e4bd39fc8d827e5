"""Score registry of the metric-quality benchmark: ``name -> function(PairInputs) -> float``.

Adding a score is one entry::

    from scores import SCORES, register

    @register("my_score")
    def my_score(p: PairInputs) -> float:
        return float(...)               # higher = more transferable

and rerunning ``python -m tguide.studies.metric_quality`` (or keep the entries in a file of your own and pass it with
``--extra-scores FILE.py``, as ``calibrated.py`` does for the calibrated scores): features are cached, so only the
new score is computed
for every (source, target, layer) and the tables get a new row. Entries in :data:`LAYER_FREE`
use only the source model's final outputs (LEEP, NCE), so they are left out of layer selection.

Scores that need parameters fitted on *other* pairs (OTCE with λ from
:func:`tguide.metrics.fit_otce_weights`) are not registry entries: ``run.py`` derives them from
the cached ``otce_wd`` / ``otce_wt`` parts with leave-one-target-out fits.

Expensive intermediate results shared by several scores (the OT coupling) are memoised on the
:class:`PairInputs` object (``p.memo``), and the first score that needs them pays their time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tguide import metrics as M

__all__ = ["LAYER_FREE", "PairInputs", "SCORES", "ScoreFn", "otce_result", "register"]


@dataclass
class PairInputs:
    """What a score sees for one (source model, target task, layer).

    Attributes:
        features: ``(N, D)`` target training features at ``layer`` (float32).
        labels: ``(N,)`` int64 target labels.
        source_features: ``(M, D)`` features of held-out *source* images at the same layer (OTCE).
        source_labels: ``(M,)`` int64 source labels.
        source_logits: ``(N, Cs)`` the source model's logits on the target images (LEEP, NCE).
        source, target, layer: names, for scores that want them.
        memo: cache shared by the scores of this pair (see :func:`otce_result`).
    """

    features: Tensor
    labels: Tensor
    source_features: Tensor
    source_labels: Tensor
    source_logits: Tensor
    source: str = ""
    target: str = ""
    layer: str = ""
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def source_probs(self) -> Tensor:
        return torch.softmax(self.source_logits.double(), dim=1)  # (N, Cs)

    @property
    def source_pred(self) -> Tensor:
        return self.source_logits.argmax(1)  # (N,)


ScoreFn = Callable[[PairInputs], float]
SCORES: dict[str, ScoreFn] = {}
LAYER_FREE: set[str] = set()


def register(name: str, layer_free: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding ``fn`` to :data:`SCORES` under ``name`` (a duplicate name is an error)."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise ValueError(f"score {name!r} is registered twice; pick another name.")
        SCORES[name] = fn
        if layer_free:
            LAYER_FREE.add(name)
        return fn

    return deco


def otce_result(p: PairInputs) -> M.OTCEResult:
    """The (memoised) exact-OT OTCE result of a pair: coupling, W_D, W_T."""
    if "otce" not in p.memo:
        p.memo["otce"] = M.otce(p.source_features, p.source_labels, p.features, p.labels, solver="emd")
    return p.memo["otce"]


@register("hscore")
def _hscore(p: PairInputs) -> float:
    return float(M.hscore(p.features, p.labels))


@register("hscore_shrinkage")
def _hscore_shrinkage(p: PairInputs) -> float:
    return float(M.hscore_shrinkage(p.features, p.labels))


@register("transrate")
def _transrate(p: PairInputs) -> float:
    return float(M.transrate(p.features, p.labels))


@register("logme")
def _logme(p: PairInputs) -> float:
    return float(M.logme(p.features, p.labels))


@register("leep", layer_free=True)
def _leep(p: PairInputs) -> float:
    return float(M.leep(p.source_probs, p.labels))


@register("nce", layer_free=True)
def _nce(p: PairInputs) -> float:
    return float(M.nce(p.source_pred, p.labels))


@register("otce_sim")
def _otce_sim(p: PairInputs) -> float:
    return float(otce_result(p).score)


@register("otce_wd")
def _otce_wd(p: PairInputs) -> float:
    """W_D alone (a distance: part of fitted OTCE, not ranked on its own)."""
    return float(otce_result(p).domain_distance)


@register("otce_wt")
def _otce_wt(p: PairInputs) -> float:
    """W_T alone (a distance: part of fitted OTCE, not ranked on its own)."""
    return float(otce_result(p).task_distance)


PARTS = {"otce_wd", "otce_wt"}  # stored for derived scores, not ranked
