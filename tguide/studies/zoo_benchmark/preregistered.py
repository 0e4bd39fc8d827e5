"""The pre-registered estimators and decision rule (``docs/preregistration.md``), on both zoos.

Fixed before any number of the ImageNet-only pool was computed:

- **E1** ``logme+knn``: LogME (You et al., ICML 2021) and the leave-one-out kNN accuracy, each
  z-scored across the candidate pool of the target, averaged with equal weights
  (:func:`tguide.studies.zoo_benchmark.scoring.combo_score`).
- **E2** ``gbc_pca64``: GBC (Pándy et al., CVPR 2022) on the train features projected onto their
  first ``k = min(64, D, N − 1)`` principal components (:func:`pca_project`; the features are
  centred, then ``Z = X_c V_k`` with ``V_k`` the top right singular vectors of ``X_c``). With
  ``D ≤ 64`` the projection is a rotation into the PCA basis (GBC's per-dimension variances make it
  basis-dependent, so every candidate is scored in its own PCA basis).

**Decision rule.** An estimator beats kNN on a zoo when the mean over targets of its sub-pool τ_w
minus kNN's, under the linear-probe truth, has a 95% bootstrap interval whose lower bound is above
0. :func:`decide` computes it: for every target the benchmark's 200 seeded sub-pools
(:func:`~tguide.studies.zoo_benchmark.evaluation.subpools`, ≥ 4 candidates, the same pools for
both), the paired difference per pool; the per-target means are averaged over targets and the
interval is the percentile bootstrap that resamples the pools of every target (stratified by
target, 2000 replicates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tguide.metrics.registry import METRICS
from tguide.studies.zoo_benchmark.evaluation import agreement, subpools
from tguide.studies.zoo_benchmark.scoring import combo_score, setup_indices

__all__ = ["E1", "E2", "ESTIMATORS", "PCA_DIM", "decide", "gbc_pca_rows", "pca_project", "subpool_taus"]

E1 = "logme+knn"
E2 = "gbc_pca64"
ESTIMATORS = (E1, E2)
PCA_DIM = 64


def pca_project(features: torch.Tensor, k: int = PCA_DIM) -> torch.Tensor:
    """``(N, D)`` → ``(N, min(k, D, N − 1))``: centred features on their top principal components."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"pca_project needs (N >= 2, D) features, got shape {tuple(features.shape)}")
    x = features.double() - features.double().mean(0, keepdim=True)
    k = max(1, min(int(k), x.shape[1], x.shape[0] - 1))
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:k].T


def gbc_pca_rows(features: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, str, float, float]]:
    """``[(setup, "gbc_pca64", score, seconds)]`` in the benchmark's three setups (full, two halves)."""
    import time

    gbc = METRICS["gbc"]
    rows = []
    for setup, idx in setup_indices(labels).items():
        t0 = time.perf_counter()
        z = pca_project(features[idx])
        value = float(gbc(*gbc.arguments(z, labels[idx])))
        rows.append((setup, E2, value, time.perf_counter() - t0))
    return rows


def subpool_taus(
    metric: str,
    scores: Mapping[str, Mapping[str, float]],
    truth: Mapping[str, float],
    pools: Sequence[Sequence[str]],
) -> list[float]:
    """τ_w of ``metric`` (a score, a baseline or an ``a+b`` combination) on each sub-pool (NaN if unscored)."""
    out = []
    for pool in pools:
        s = combo_score(metric, {k: dict(v) for k, v in scores.items()}, list(pool))
        keys = [c for c in pool if c in s and c in truth]
        out.append(agreement(s, truth, keys)["weighted_tau"] if len(keys) >= 4 else float("nan"))
    return out


def decide(
    per_target: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | bool]:
    """The decision rule on paired sub-pool τ_w: ``per_target[t] = (estimator τ_w per pool, kNN τ_w per pool)``.

    Returns ``{"diff", "low", "high", "beats_knn", "n_targets"}``: the mean over targets of the
    per-target mean difference, its stratified percentile bootstrap interval, and whether ``low > 0``.
    """
    diffs = []
    for a, b in per_target.values():
        d_all = np.asarray(a, float) - np.asarray(b, float)
        d = d_all[np.isfinite(d_all)]
        if d.size:
            diffs.append(d)
    if not diffs:
        nan = float("nan")
        return {"diff": nan, "low": nan, "high": nan, "beats_knn": False, "n_targets": 0}
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for d in diffs:
        boot += d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    boot /= len(diffs)
    alpha = (1 - confidence) / 2
    diff = float(np.mean([d.mean() for d in diffs]))
    low, high = float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))
    return {"diff": diff, "low": low, "high": high, "beats_knn": bool(low > 0), "n_targets": len(diffs)}


def pools_for(truth: Mapping[str, Mapping[str, float]], n_pools: int = 200) -> dict[str, list[list[str]]]:
    """The benchmark's sub-pools per target (seed = the target's index in sorted order, as in quality.py)."""
    return {
        t: subpools(sorted(truth[t]), n_pools, 4, seed=ti)
        for ti, t in enumerate(sorted(truth))
        if len(truth[t]) >= 4 and all(math.isfinite(v) for v in truth[t].values())
    }
