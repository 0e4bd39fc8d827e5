r"""Rank agreement between transferability scores and measured transfer accuracy.

Written from the definitions (float64 numpy), checked against ``scipy.stats`` in the tests:

- Pearson :math:`r = \frac{\sum (x_i-\bar x)(y_i-\bar y)}{\sqrt{\sum (x_i-\bar x)^2 \sum (y_i-\bar y)^2}}`;
- Spearman :math:`\rho` = Pearson of the average ranks (ties share their mean rank);
- Kendall :math:`\tau_b = \frac{n_c - n_d}{\sqrt{(n_0-n_x)(n_0-n_y)}}` over all pairs, with
  :math:`n_x, n_y` the pairs tied in x, in y;
- weighted Kendall :math:`\tau_w` (Vigna 2015, ``scipy.stats.weightedtau`` defaults): each pair
  ``(i, j)`` weighs :math:`w_{ij} = \frac{1}{r_i+1} + \frac{1}{r_j+1}` (hyperbolic weigher,
  additive), with :math:`r` the rank by decreasing ``(x, y)`` lexicographically,

  .. math:: \tau_w(r) = \frac{\sum_{i<j} w_{ij}\,\operatorname{sgn}(x_i-x_j)\operatorname{sgn}(y_i-y_j)}
            {\sqrt{\sum_{i<j,\,x_i\ne x_j} w_{ij} \;\sum_{i<j,\,y_i\ne y_j} w_{ij}}},

  averaged over the rank by ``(x, y)`` and by ``(y, x)`` (scipy's ``rank=True``). Top ranks weigh
  most, so swapping the two best models costs more than swapping the two worst — the measure
  Huang et al., ICML 2022 (TransRate) uses for model selection;
- top-1 agreement: whether the best-scored item is (one of) the most accurate, and the *regret*
  ``max(y) - y[argmax x]`` (accuracy lost by following the score).

All take two 1-D sequences of the same length ≥ 2; a constant input gives ``nan`` (undefined
correlation) rather than an error, so that a table can still be printed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RankSummary", "kendall", "pearson", "rankdata", "regret", "spearman", "summarise", "top1", "weighted_tau"]


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}.")
    if a.size < 2:
        raise ValueError(f"need at least 2 items to correlate, got {a.size}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite (drop NaN/Inf items first).")
    return a, b


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation (``nan`` if either input is constant)."""
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def rankdata(x: Any) -> np.ndarray:
    """Ascending ranks 1..n, ties get the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman ρ: Pearson of the (tie-averaged) ranks."""
    a, b = _pair(x, y)
    return pearson(rankdata(a), rankdata(b))


def kendall(x: Any, y: Any) -> float:
    """Kendall τ_b (tie-corrected), O(n²)."""
    a, b = _pair(x, y)
    sx = np.sign(a[:, None] - a[None, :])
    sy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(a.size, 1)
    num = float((sx * sy)[iu].sum())
    den = math.sqrt(float((sx[iu] != 0).sum()) * float((sy[iu] != 0).sum()))
    return num / den if den > 0 else float("nan")


def _weighted_ranked(a: np.ndarray, b: np.ndarray) -> float:
    n = a.size
    perm = np.lexsort((b, a))[::-1]  # decreasing (a, b); equal pairs: later index first (as scipy)
    rank = np.empty(n, dtype=np.float64)
    rank[perm] = np.arange(n)
    w = 1.0 / (rank + 1.0)
    wij = w[:, None] + w[None, :]
    sx = np.sign(a[:, None] - a[None, :])
    sy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    num = float((wij * sx * sy)[iu].sum())
    den = math.sqrt(float((wij * (sx != 0))[iu].sum()) * float((wij * (sy != 0))[iu].sum()))
    return num / den if den > 0 else float("nan")


def weighted_tau(x: Any, y: Any) -> float:
    """Weighted Kendall τ_w with scipy's defaults (hyperbolic additive weigher, ``rank=True``)."""
    a, b = _pair(x, y)
    return (_weighted_ranked(a, b) + _weighted_ranked(b, a)) / 2


def top1(x: Any, y: Any) -> float:
    """1.0 if the item with the highest score has the highest accuracy (ties count as a hit), else 0.0."""
    a, b = _pair(x, y)
    return float(b[int(np.argmax(a))] >= b.max())


def regret(x: Any, y: Any) -> float:
    """``max(y) − y[argmax x]``: accuracy lost by picking the best-scored item (0 = perfect)."""
    a, b = _pair(x, y)
    return float(b.max() - b[int(np.argmax(a))])


@dataclass(frozen=True)
class RankSummary:
    """Agreement of one score with the ground truth on one target (``n`` items ranked)."""

    n: int
    pearson: float
    spearman: float
    kendall: float
    weighted_tau: float
    top1: float
    regret: float

    def as_dict(self) -> dict[str, float]:
        return {
            k: float(getattr(self, k))
            for k in ("n", "pearson", "spearman", "kendall", "weighted_tau", "top1", "regret")
        }


def summarise(
    scores: Mapping[str, float] | Sequence[float], accuracy: Mapping[str, float] | Sequence[float]
) -> RankSummary:
    """All agreement measures for one target. With mappings (item → value) the common keys are used."""
    if isinstance(scores, Mapping) and isinstance(accuracy, Mapping):
        keys = sorted(set(scores) & set(accuracy))
        x = [scores[k] for k in keys]
        y = [accuracy[k] for k in keys]
    else:
        x, y = list(scores), list(accuracy)  # type: ignore[arg-type]
    return RankSummary(
        len(x), pearson(x, y), spearman(x, y), kendall(x, y), weighted_tau(x, y), top1(x, y), regret(x, y)
    )
