"""Evaluation of the ImageNet-only pool: every score and baseline, saturation, the published claims.

Reads ``imagenet_scores.csv`` and ``imagenet_groundtruth.csv`` (``python -m
tguide.studies.zoo_benchmark imagenet``) and, for the pre-registered estimators on the mixed pool,
``zoo_scores.csv`` + ``zoo_scores_gbc_pca64.csv`` + ``zoo_groundtruth.csv``. Measures per target
(the whole pool) and over the benchmark's 200 seeded sub-pools per target (≥ 4 candidates, the same
pools for every score): weighted Kendall τ_w, top-1 hit and regret (best truth − truth of the
top-scored candidate). Paired comparisons (:func:`paired`) use the pre-registration's stratified
bootstrap (:func:`tguide.studies.zoo_benchmark.preregistered.decide`).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tguide.studies.zoo_benchmark.evaluation import agreement, bootstrap_ci, subpools
from tguide.studies.zoo_benchmark.preregistered import E1, E2, decide
from tguide.studies.zoo_benchmark.scoring import SCORES, combo_score, read_scores, with_baselines

__all__ = [
    "BASELINES",
    "METRICS",
    "Evaluation",
    "evaluate",
    "mixed_truth",
    "paired",
    "read_extra_scores",
    "saturation",
]

BASELINES = ("source_acc", "params", "knn", "linear_probe", "random")
METRICS = (*SCORES, E2, E1, "source_acc", "params", "random")
SCORE_ONLY = tuple(m for m in (*SCORES, E2) if m not in ("knn", "linear_probe"))  # what saturation checks
Evaluation = dict[str, Any]


def read_extra_scores(table: dict, path: Path) -> None:
    """Merge another long scores CSV (e.g. ``zoo_scores_gbc_pca64.csv``) into ``table`` in place."""
    if not path.is_file():
        return
    for key, metrics in read_scores(path).items():
        for m, vals in metrics.items():
            if m != "extract":
                table[key][m].update(vals)


def mixed_truth(path: Path, gap: float = 0.15) -> dict[str, dict[str, dict[str, float]]]:
    """The mixed benchmark's truth: linear probe; fine-tune where it is not under-trained (≥ probe − gap)."""
    truth: dict[str, dict[str, dict[str, float]]] = {"linear_probe": {}, "finetune": {}}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            lp = float(r["linear_probe_acc"])
            truth["linear_probe"].setdefault(r["target"], {})[r["candidate"]] = lp
            if r["finetune_acc_mean"] not in ("", "nan") and float(r["finetune_acc_mean"]) >= lp - gap:
                truth["finetune"].setdefault(r["target"], {})[r["candidate"]] = float(r["finetune_acc_mean"])
    return truth


def _regret(scores: Mapping[str, float], truth: Mapping[str, float], pool: Sequence[str]) -> float:
    keys = [c for c in pool if c in scores and c in truth and math.isfinite(scores[c])]
    top = max(keys, key=lambda c: scores[c])
    return max(truth[c] for c in keys) - truth[top]


def evaluate(
    table: Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]],
    truth: Mapping[str, Mapping[str, float]],
    priors: Mapping[str, float],
    params: Mapping[str, float],
    metrics: Sequence[str] = METRICS,
    n_pools: int = 200,
) -> Evaluation:
    """Per metric: per-target τ_w / top-1 / regret on the whole pool, sub-pool τ_w lists per target, summaries."""
    all_targets = sorted({t for t, _ in table})
    per: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    pools_tau: dict[str, dict[str, list[float]]] = defaultdict(dict)
    pools_regret: dict[str, list[float]] = defaultdict(list)
    pools_top1: dict[str, list[float]] = defaultdict(list)
    for ti, t in enumerate(all_targets):
        gt = truth.get(t, {})
        if len(gt) < 4:
            continue
        full = with_baselines({k: dict(v) for k, v in table[(t, "full")].items()}, dict(priors), dict(params), seed=ti)
        names = sorted(gt)
        for m in metrics:
            s = combo_score(m, full, names)
            if sum(c in gt for c in s) >= 4:
                a = agreement(s, gt)
                per[m][t] = {"tau_w": a["weighted_tau"], "top1": a["top1"], "regret": _regret(s, gt, names)}
        pools = subpools(names, n_pools, 4, seed=ti)
        for m in metrics:
            taus = []
            for pi, pool in enumerate(pools):
                if m == "random":
                    perm = np.random.default_rng(1000 * ti + pi).permutation(len(pool))
                    s = {c: float(v) for c, v in zip(pool, perm)}
                else:
                    s = combo_score(m, full, pool)
                keys = [c for c in pool if c in s]
                if len(keys) < 4:
                    taus.append(float("nan"))
                    continue
                a = agreement(s, gt, keys)
                taus.append(a["weighted_tau"])
                pools_top1[m].append(a["top1"])
                pools_regret[m].append(_regret(s, gt, keys))
            pools_tau[m][t] = taus
    summary = {}
    for m in metrics:
        if m not in per:
            continue
        vals = list(per[m].values())
        summary[m] = {
            "mean_tau_w": float(np.mean([v["tau_w"] for v in vals])),
            "top1": float(np.mean([v["top1"] for v in vals])),
            "regret": float(np.mean([v["regret"] for v in vals])),
            "subpool_tau_w": bootstrap_ci([x for v in pools_tau[m].values() for x in v]),
            "subpool_top1": bootstrap_ci(pools_top1[m]),
            "subpool_regret": bootstrap_ci(pools_regret[m]),
            "n_targets": len(vals),
        }
    return {"per_target": per, "pools_tau": pools_tau, "summary": summary, "targets": sorted(truth)}


def paired(ev: Evaluation, a: str, b: str) -> dict[str, float | bool]:
    """Mean over targets of sub-pool τ_w(a) − τ_w(b), with its stratified 95% bootstrap interval."""
    pa, pb = ev["pools_tau"].get(a, {}), ev["pools_tau"].get(b, {})
    return decide({t: (pa[t], pb[t]) for t in pa if t in pb})


def saturation(
    table: Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]],
    n_train: Mapping[str, int],
    metrics: Sequence[str] = SCORE_ONLY,
    rtol: float = 1e-6,
) -> dict[str, Any]:
    """Where N < D makes scores saturate: per target the wide candidates (D ≥ N − 1) and, per score, the
    targets where two or more of them tie (equal within ``rtol``) — the score cannot order them there
    (for NCTI / ETran, per term). kNN and the linear probe are accuracies: their ties are discreteness.

    The gap between the D ≥ N − 1 regime and the scores that degenerate in it is the trust issue's:
    H-score = C − 1, SFDA / ETran's LDA term = 1, GBC's coefficients underflowing to 0 (reported as ties)."""
    wide: dict[str, list[str]] = {}
    tied: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for t in sorted({t for t, _ in table}):
        full = table[(t, "full")]
        dims = full.get("extract", {})
        n = n_train.get(t)
        if n is None:
            continue
        wide[t] = sorted(c for c, d in dims.items() if d >= n - 1)
        for m in metrics:
            for key in [k for k in full if k == m or k.startswith(m + ".")]:  # NCTI / ETran: their terms
                vals = {c: full[key][c] for c in wide[t] if c in full[key]}
                groups = [
                    c
                    for c in vals
                    if any(o != c and math.isclose(vals[c], vals[o], rel_tol=rtol, abs_tol=1e-12) for o in vals)
                ]
                if groups:
                    tied[m][t if key == m else f"{t} [{key.split('.', 1)[1]}]"] = sorted(groups)
    return {"wide": wide, "tied": dict(tied), "n_train": dict(n_train)}
