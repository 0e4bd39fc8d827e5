"""Scores of the zoo benchmark: every registered transferability score on every (target, candidate).

For every target of :mod:`tguide.data.targets` and every member of the pool
(:func:`tguide.studies.zoo_benchmark.protocol.pool`), the penultimate features and (where the
model has a head) the source-class probabilities of the target's **train split** — the labelled
data a user has before fine-tuning —, then every registered score (:mod:`tguide.metrics.registry`)
in three setups that differ in one component: ``full`` (the whole train split) and ``half_a`` /
``half_b`` (two disjoint seeded stratified halves of it). Written to ``<out>/zoo_scores.csv``
(long format, with seconds per score) as each (target, candidate) finishes; finished pairs are
skipped on restart.

Baselines (what a user could do instead of a score): ``source_acc`` (the checkpoint's reported
source accuracy, else the one measured on the shared data; the ShuffleNetV2 trunk has none and
gets 0.60, the published ImageNet top-1 of the full ShuffleNetV2 0.5×; the random control 0.10),
``params`` (parameter count), ``knn`` and ``linear_probe`` (cross-validated on the train split),
``random`` (a seeded random score). OTCE is not scored: it needs the source data, and the
ImageNet sources are not available here.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tguide.data.targets import load_target
from tguide.metrics._subset import stratified_subset
from tguide.metrics.registry import METRICS
from tguide.studies.zoo_benchmark.evaluation import zscore_mean
from tguide.studies.zoo_benchmark.groundtruth import extract_features
from tguide.studies.zoo_benchmark.protocol import RANDOM_CONTROL, cached_inputs, normalise

__all__ = [
    "FIELDS",
    "SCORES",
    "SETUPS",
    "SHUFFLENET_PRIOR",
    "combo_score",
    "pool_score",
    "read_scores",
    "read_seconds",
    "run_scores",
    "score_pair",
    "setup_indices",
    "source_prior",
    "source_probs",
    "with_baselines",
]

SCORES = (
    "hscore",
    "hscore_shrinkage",
    "transrate",
    "transrate_comparable",
    "logme",
    "leep",
    "nce",
    "sfda",
    "ncti",
    "etran",
    "gbc",
    "nleep",
    "knn",
    "linear_probe",
)
SETUPS = ("full", "half_a", "half_b")
SHUFFLENET_PRIOR = 0.60  # ImageNet top-1 of the full ShuffleNetV2 0.5x (Ma et al., ECCV 2018), the trunk's origin
FIELDS = ["target", "candidate", "setup", "metric", "score", "seconds"]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def source_prior(cand: Any) -> float:
    e = cand.entry
    if cand.name == RANDOM_CONTROL:
        return 0.10
    acc = e.reported_acc if e.reported_acc is not None else e.measured_acc
    return float(acc) if acc is not None else SHUFFLENET_PRIOR


@torch.no_grad()
def source_probs(model: torch.nn.Module, x_u8: torch.Tensor, entry: Any, batch: int = 200) -> torch.Tensor | None:
    if not entry.has_head:
        return None
    model.eval()
    return torch.cat(
        [model(normalise(x_u8[i : i + batch], entry)).double().softmax(1) for i in range(0, len(x_u8), batch)]
    )


def setup_indices(labels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    n = len(labels)
    half = stratified_subset(labels, n // 2, seed=seed)
    other = torch.tensor(sorted(set(range(n)) - set(half.tolist())), dtype=torch.int64)
    return {"full": torch.arange(n), "half_a": half, "half_b": other}


def score_pair(
    features: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor | None
) -> list[tuple[str, str, float, float]]:
    """``[(setup, metric, score, seconds)]`` for one (target, candidate); pool-normalised scores store terms."""
    rows = []
    for setup, idx in setup_indices(labels).items():
        f, y = features[idx].double(), labels[idx]
        p = probs[idx] if probs is not None else None
        for name in SCORES:
            info = METRICS[name]
            if info.needs_source_probs and p is None:
                continue
            t0 = time.perf_counter()
            if info.pool_normalised:
                terms_fn, _ = info.load_pool()  # type: ignore[misc]
                terms = terms_fn(f, y)
                dt = time.perf_counter() - t0
                for k, v in vars(terms).items():
                    rows.append((setup, f"{name}.{k}", float(v), dt))
                continue
            value = float(info(*info.arguments(f, y, source_probs=p)))
            rows.append((setup, name, value, time.perf_counter() - t0))
    return rows


def run_scores(
    out: Path,
    targets: list[str],
    candidates: list[Any],
    cache: Path | None,
    root: str | None,
    per_class: tuple[int, int, int] | None,
    log: Callable[[str], None] = _log,
) -> None:
    """Score every (target, candidate) not yet in ``<out>/zoo_scores.csv`` and append its rows."""
    path = out / "zoo_scores.csv"
    done = set()
    if path.is_file():
        with path.open() as fh:
            done = {(r["target"], r["candidate"]) for r in csv.DictReader(fh)}
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        if new:
            w.writeheader()
        for tname in targets:
            target = load_target(tname, root, per_class=per_class)
            for cand in candidates:
                if (tname, cand.name) in done:
                    continue
                t0 = time.perf_counter()
                data = cached_inputs(target, cand.entry, cache)
                x, y = data["train"]
                model = cand.build()
                feats = extract_features(model, x, cand.entry)
                probs = source_probs(model, x, cand.entry)
                t_extract = time.perf_counter() - t0
                rows = score_pair(feats, y, probs)
                rows.append(("full", "extract", float(feats.shape[1]), t_extract))
                for setup, metric, score, sec in rows:
                    w.writerow(
                        {
                            "target": tname,
                            "candidate": cand.name,
                            "setup": setup,
                            "metric": metric,
                            "score": repr(score),
                            "seconds": f"{sec:.4f}",
                        }
                    )
                fh.flush()
                log(
                    f"scored {tname:16s} {cand.name:22s} D={feats.shape[1]:5d} extract {t_extract:.1f}s "
                    f"scores {sum(r[3] for r in rows[:-1]):.1f}s"
                )


# ----------------------------------------------------------------------------- report


def read_scores(path: Path) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(target, setup): {metric: {candidate: score}}}`` and the seconds table."""
    table: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    with path.open() as fh:
        for r in csv.DictReader(fh):
            table[(r["target"], r["setup"])][r["metric"]][r["candidate"]] = float(r["score"])
    return table


def read_seconds(path: Path) -> dict[str, list[float]]:
    sec: dict[str, list[float]] = defaultdict(list)
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if r["setup"] == "full":
                sec[r["metric"].split(".")[0]].append(float(r["seconds"]))
    return sec


def pool_score(metric: str, scores: dict[str, dict[str, float]], pool: list[str]) -> dict[str, float]:
    """A metric's scores on ``pool``; NCTI/ETran are min-max normalised across ``pool`` itself."""
    info = METRICS.get(metric)
    if info is not None and info.pool_normalised:
        _, combine = info.load_pool()  # type: ignore[misc]
        term_names = sorted(k.split(".", 1)[1] for k in scores if k.startswith(metric + "."))
        members = [c for c in pool if all(c in scores[f"{metric}.{t}"] for t in term_names)]
        if len(members) < 2:
            return {}
        from tguide.metrics.functional import etran as _etran
        from tguide.metrics.functional import ncti as _ncti

        cls = {"ncti": _ncti.NCTITerms, "etran": _etran.ETranTerms}[metric]
        terms = [
            cls(**{t: torch.tensor(scores[f"{metric}.{t}"][c], dtype=torch.float64) for t in term_names})
            for c in members
        ]
        return dict(zip(members, combine(terms).tolist()))
    return {c: scores[metric][c] for c in pool if c in scores.get(metric, {})}


def combo_score(metric: str, scores: dict[str, dict[str, float]], pool: list[str]) -> dict[str, float]:
    """``"a+b"``: the mean of the z-scores of ``a`` and ``b`` over ``pool`` (a documented combination)."""
    if "+" not in metric:
        return pool_score(metric, scores, pool)
    parts = [pool_score(m, scores, pool) for m in metric.split("+")]
    if any(len(q) < 2 for q in parts):
        return {}
    return zscore_mean(parts)


def with_baselines(
    scores: dict[str, dict[str, float]], priors: dict[str, float], params: dict[str, float], seed: int
) -> dict[str, dict[str, float]]:
    out = dict(scores)
    out["source_acc"] = dict(priors)
    out["params"] = dict(params)
    rng = np.random.default_rng(seed)
    out["random"] = {c: float(v) for c, v in zip(sorted(priors), rng.permutation(len(priors)))}
    return out
