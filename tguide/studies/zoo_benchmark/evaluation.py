r"""How well does a transferability score pick models? The evaluation protocol of the zoo benchmark.

A score is judged against a ground truth (fine-tuned or linear-probe accuracy of every
candidate on a target) with the measures of :mod:`tguide.select.correlation` — weighted Kendall
:math:`\tau_w` (Vigna 2015, as ``scipy.stats.weightedtau``), Kendall :math:`\tau_b`, Pearson —
and by what following it gains:

- *top-k hit*: the truly best candidate is among the ``k`` best-scored ones;
- *relative top accuracy*: :math:`\mathrm{acc}(\arg\max \text{score}) / \max \mathrm{acc}`.

Agostinelli et al. (ECCV 2022, "How stable are transferability metrics evaluations?") show that
rankings flip under small changes of the setup, so every measure is also taken over many
random *sub-pools* of the candidates (:func:`subpools`, the same pools for every score so that
differences are paired), summarised by a mean with a bootstrap interval
(:func:`bootstrap_ci`), and the *setup stability* of a score (:func:`setup_stability`) is the
mean Kendall :math:`\tau` between its candidate orderings in setups that differ in one
component (e.g. the target sample drawn).

:func:`leave_one_target_out` chooses a score (or a combination) on the other targets only and
evaluates it on the held-out one, so a "best of many scores" is not judged on the data that
chose it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from tguide.select.correlation import kendall, pearson, weighted_tau

__all__ = [
    "agreement",
    "bootstrap_ci",
    "leave_one_target_out",
    "relative_top_accuracy",
    "setup_stability",
    "subpools",
    "topk_hit",
    "zscore_mean",
]


def _aligned(
    scores: Mapping[str, float], truth: Mapping[str, float], pool: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = [
        k
        for k in (pool if pool is not None else sorted(truth))
        if k in scores and k in truth and math.isfinite(scores[k]) and math.isfinite(truth[k])
    ]
    return keys, np.array([scores[k] for k in keys], float), np.array([truth[k] for k in keys], float)


def topk_hit(scores: ArrayLike, truth: ArrayLike, k: int) -> float:
    """1.0 when a truly best item (ties count) is among the ``k`` best-scored items, else 0.0."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if s.shape != t.shape or s.size == 0:
        raise ValueError(f"scores and truth must be non-empty and of one length, got {s.size} and {t.size}.")
    top = np.argsort(-s, kind="stable")[:k]
    return float(t[top].max() >= t.max())


def relative_top_accuracy(scores: ArrayLike, truth: ArrayLike) -> float:
    """``truth[argmax scores] / max(truth)``: 1.0 when the score picks the best item."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if t.max() <= 0:
        raise ValueError("truth must have a positive maximum (accuracies).")
    return float(t[int(np.argmax(s))] / t.max())


def agreement(
    scores: Mapping[str, float], truth: Mapping[str, float], pool: Sequence[str] | None = None
) -> dict[str, float]:
    """All measures for one target on ``pool`` (default: every candidate that has both values).

    Returns ``{"n", "weighted_tau", "kendall", "pearson", "top1", "top3", "rel_top_acc"}``.
    """
    keys, s, t = _aligned(scores, truth, pool)
    if len(keys) < 2:
        raise ValueError(f"need at least 2 candidates with a score and a ground truth, got {len(keys)}.")
    return {
        "n": float(len(keys)),
        "weighted_tau": weighted_tau(s, t),
        "kendall": kendall(s, t),
        "pearson": pearson(s, t),
        "top1": topk_hit(s, t, 1),
        "top3": topk_hit(s, t, 3),
        "rel_top_acc": relative_top_accuracy(s, t),
    }


def subpools(names: Sequence[str], n_pools: int = 200, min_size: int = 4, seed: int = 0) -> list[list[str]]:
    """``n_pools`` random sub-pools of ``names`` with sizes drawn uniformly in ``[min_size, len(names)]``.

    Seeded, so every score is evaluated on the same pools (paired comparisons).
    """
    names = list(names)
    if len(names) < min_size:
        raise ValueError(f"need at least min_size={min_size} candidates, got {len(names)}.")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_pools):
        size = int(rng.integers(min_size, len(names) + 1))
        out.append(sorted(rng.choice(names, size=size, replace=False).tolist()))
    return out


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile bootstrap interval."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - confidence) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def setup_stability(orderings: Sequence[Mapping[str, float]]) -> float:
    """Mean Kendall τ between every pair of one score's candidate scores in different setups.

    ``orderings[i]`` maps candidate → score in setup ``i``; the setups should differ in one
    component only (Agostinelli et al., ECCV 2022). 1.0 = the ordering never changes.
    """
    taus = []
    for i in range(len(orderings)):
        for j in range(i + 1, len(orderings)):
            keys = sorted(set(orderings[i]) & set(orderings[j]))
            a = [orderings[i][k] for k in keys]
            b = [orderings[j][k] for k in keys]
            if len(keys) >= 2 and all(map(math.isfinite, a + b)):
                taus.append(kendall(a, b))
    return float(np.nanmean(taus)) if taus else float("nan")


def zscore_mean(parts: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted mean of per-candidate z-scores (each part standardised over the candidates it
    shares with the others): the combination rule used for score + prior mixtures."""
    keys = sorted(set.intersection(*(set(p) for p in parts)))
    w = np.ones(len(parts)) if weights is None else np.asarray(weights, float)
    total = np.zeros(len(keys))
    for wi, p in zip(w, parts):
        x = np.array([p[k] for k in keys], float)
        sd = x.std()
        total += wi * ((x - x.mean()) / sd if sd > 0 else np.zeros_like(x))
    return dict(zip(keys, (total / w.sum()).tolist()))


def leave_one_target_out(
    per_target: Mapping[str, Mapping[str, float]],
    criterion: Callable[[Sequence[float]], float] = lambda v: float(np.mean(v)),
) -> dict[str, str]:
    """For each target, the score name with the best ``criterion`` of its values on the OTHER targets.

    ``per_target[score][target]`` is the measure (e.g. τ_w) of ``score`` on ``target``. Returns
    ``{held_out_target: chosen_score}``; the chosen score's value on the held-out target is then
    an honest estimate of "pick the score that worked elsewhere".
    """
    targets = sorted(set.union(*(set(v) for v in per_target.values())))
    chosen = {}
    for held in targets:
        best, best_val = None, -math.inf
        for name, vals in per_target.items():
            others = [v for t, v in vals.items() if t != held and math.isfinite(v)]
            if len(others) < len(targets) - 1:
                continue
            val = criterion(others)
            if val > best_val:
                best, best_val = name, val
        if best is None:
            raise ValueError(f"no score has values on every target other than {held!r}.")
        chosen[held] = best
    return chosen
