"""Transferability-guided fine-tuning as a function: rank, fine-tune every contender, compare.

:func:`guided` ranks the candidates with :func:`tguide.select.rank.rank`, fine-tunes every
candidate whose P(best) clears a threshold (the pick's ``contenders``, from the paired bootstrap of
:mod:`tguide.select.bootstrap`) and each baseline's pick with :func:`tguide.select.finetune.finetune`,
and reports predicted score beside realised accuracy. No config is edited and no CLI is called;
the ``recipe=guided`` runner (:mod:`tguide.select.guided_recipe`) is a thin wrapper over it.
:func:`choose` picks fine-tune jobs from a ranking table by a fixed top-k and the ``random`` /
``median`` baselines (which :func:`guided` uses for those two baselines).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tguide.errors import TGuideError

__all__ = ["BASELINE_CHOICES", "FineTuneJob", "GuidedResult", "choose", "guided"]

BASELINE_CHOICES = ("source_accuracy", "random", "median")
_CHOSEN_HERE = ("random", "median")  # baselines guided() adds itself (rank knows the others)
_HEAD_LAYER = "@output"


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


class FineTuneJob(dict):
    """One fine-tune job of :func:`choose`: ``candidate, spec, layer, score, rank, chosen_by`` (a list)."""


def _records(table: Any) -> list[dict[str, Any]]:
    """Rows of ``rank``'s table (a pandas DataFrame, or a list of dicts) as dicts."""
    if hasattr(table, "to_dict"):
        return [dict(r) for r in table.to_dict("records")]
    return [dict(r) for r in table]


def choose(
    table: Any,
    specs: Mapping[str, str],
    default_layers: Mapping[str, str],
    metric: str,
    *,
    top_k: int = 2,
    baselines: Sequence[str] = ("source_accuracy",),
    seed: int = 0,
    source_accuracy: Mapping[str, float | None] | None = None,
) -> list[FineTuneJob]:
    """The fine-tune jobs for a ranking table (see the module doc).

    Args:
        table: :func:`tguide.select.rank.rank`'s rows (``candidate, layer, metric, kind, score``).
        specs: candidate name → spec (what the fine-tune resolves).
        default_layers: candidate name → the layer used for head scores and baselines.
        metric: the metric whose scores pick.
        top_k: how many distinct candidates the metric picks.
        baselines: any of :data:`BASELINE_CHOICES`.
        seed: seeds the ``random`` choice.
        source_accuracy: candidate name → source accuracy (default: the table's
            ``source_accuracy`` rows).
    """
    unknown = [b for b in baselines if b not in BASELINE_CHOICES]
    if unknown:
        raise TGuideError(f"unknown guided.baselines {unknown}; valid: {', '.join(BASELINE_CHOICES)}")
    if top_k < 0:
        raise TGuideError(f"guided.top_k must be ≥ 0, got {top_k}")
    rows = _records(table)
    scored = [r for r in rows if r.get("metric") == metric and _finite(r.get("score"))]
    if not scored:
        raise TGuideError(f"no finite {metric} score in the ranking; pick another guided.metric")
    ordered = sorted(scored, key=lambda r: -float(r["score"]))
    rank_of = {(r["candidate"], r["layer"]): i + 1 for i, r in enumerate(ordered)}

    def layer_of(r: Mapping[str, Any]) -> str:
        return default_layers[r["candidate"]] if r["layer"] in (_HEAD_LAYER, "", None) else str(r["layer"])

    best: dict[str, dict[str, Any]] = {}
    for r in ordered:  # best layer per candidate, candidates in score order
        best.setdefault(r["candidate"], r)
    jobs: dict[tuple[str, str], FineTuneJob] = {}

    def add(name: str, layer: str, why: str) -> None:
        key = (name, layer)
        if key not in jobs:
            row = next((r for r in scored if r["candidate"] == name and layer_of(r) == layer), None)
            jobs[key] = FineTuneJob(
                candidate=name,
                spec=specs[name],
                layer=layer,
                metric=metric,
                score=float(row["score"]) if row else math.nan,
                rank=rank_of.get((name, row["layer"])) if row else None,
                chosen_by=[],
            )
        jobs[key]["chosen_by"].append(why)

    for i, (name, r) in enumerate(list(best.items())[:top_k]):
        add(name, layer_of(r), f"metric:{metric}#{i + 1}")
    names = list(specs)
    if "source_accuracy" in baselines:
        acc = dict(source_accuracy or {})
        if not acc:
            acc = {r["candidate"]: r["score"] for r in rows if r.get("metric") == "source_accuracy"}
        known = {n: float(a) for n, a in acc.items() if n in specs and a is not None and _finite(a)}
        if known:
            top = max(known, key=lambda n: known[n])
            add(top, default_layers[top], "baseline:source_accuracy")
    if "random" in baselines and names:
        name = random.Random(int(seed)).choice(sorted(names))
        add(name, default_layers[name], "baseline:random")
    if "median" in baselines and best:
        order = list(best)
        name = order[(len(order) - 1) // 2]
        add(name, layer_of(best[name]), "baseline:median")
    return list(jobs.values())


@dataclass
class GuidedResult:
    """What :func:`guided` returns: one row per fine-tuned (candidate, layer) with keys ``candidate,
    spec, layer, metric, predicted_score, p_best, rank, test_acc, test_acc_std, role`` (role
    ``"pick"``, ``"contender"`` or ``"baseline:<name>"``, ``;``-joined when chosen twice), the rank
    agreement of predicted score and realised accuracy (``n``, ``spearman``, ``kendall``), the
    ranking it came from, and ``runs``: one dict per fine-tune (``candidate, layer, seed, run_dir,
    test_acc, val_acc``; ``run_dir`` is ``None`` without ``out_dir``), rows' order."""

    rows: list[dict[str, Any]]
    agreement: dict[str, Any]
    ranking: Any
    runs: list[dict[str, Any]] = field(default_factory=list)


def _finetune_once(
    job: Mapping[str, Any], target: Any, seed: int, epochs: int, out_dir: Path | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """One fine-tune of ``job`` (reused from ``<out_dir>/metrics.json`` when a run already finished)."""
    from tguide.select.finetune import finetune

    done = None if out_dir is None else out_dir / "metrics.json"
    if done is not None and done.is_file():
        metrics = json.loads(done.read_text())
    else:
        res = finetune(
            job["spec"] or job["candidate"],
            target,
            layer=job["layer"],
            epochs=int(epochs),
            seed=int(seed),
            out_dir=out_dir,
            **dict(options),
        )
        metrics = {"val/acc": float(res.val_acc), "test/acc": float(res.test_acc)}
        if done is not None:
            done.parent.mkdir(parents=True, exist_ok=True)
            tmp = done.with_name(".metrics.json.tmp")
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
            tmp.replace(done)  # written last: its presence means the fine-tune finished
    return {
        "candidate": job["candidate"],
        "layer": job["layer"],
        "seed": int(seed),
        "run_dir": None if out_dir is None else str(out_dir),
        "test_acc": metrics.get("test/acc"),
        "val_acc": metrics.get("val/acc"),
    }


def guided(
    candidates: Sequence[Any],
    target: Any,
    *,
    metric: str | None = None,
    threshold: float = 0.1,
    max_finetunes: int = 4,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    out_dir: str | Path | None = None,
    baselines: Sequence[str] = ("source_accuracy",),
    baseline_seed: int = 0,
    rank_target: Any = None,
    rank_options: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
) -> GuidedResult:
    """Rank ``candidates`` on ``target``, fine-tune every contender of the pick and the baselines' picks.

    The contenders are the candidates whose P(best) by ``metric`` (paired bootstrap,
    :mod:`tguide.select.bootstrap`) is at least ``threshold`` (the pick itself always; at most
    ``max_finetunes``, most probable first), each cut at its best-scoring layer; a clear pick
    fine-tunes one candidate, a too-close-to-call one all that are close. Each baseline of
    ``rank``'s baseline picks (``source_accuracy``, ``knn``, ...) adds its choice; ``random`` (a
    candidate drawn with ``baseline_seed``) and ``median`` (the candidate of median score) are
    chosen here by :func:`choose`, at the candidate's default and best layer. Every
    (candidate, layer) is fine-tuned once per seed with :func:`tguide.select.finetune.finetune`
    (``epochs`` and ``finetune_options``); with ``out_dir``, ``out_dir/<candidate>__<layer>/seed<S>``
    keeps the best checkpoint and a ``metrics.json``, and a fine-tune whose ``metrics.json`` exists
    is reused, so a killed run resumes where it stopped. ``rank_target`` is what ``rank`` scores
    (default ``target``; e.g. the training split only, so that no validation or test image is scored).
    """
    from tguide.select.correlation import kendall, spearman
    from tguide.select.rank import rank

    if max_finetunes < 1:
        raise TGuideError(f"max_finetunes must be ≥ 1, got {max_finetunes}")
    opts = dict(rank_options or {})
    opts.setdefault("bootstrap", 100)  # the contenders need P(best) (rank's default, said here)
    metrics = [metric] if metric else list(opts.pop("metrics", ["logme"]))
    opts.pop("metrics", None)
    ranking = rank(
        candidates,
        target if rank_target is None else rank_target,
        metrics=metrics,
        baselines=[b for b in baselines if b not in _CHOSEN_HERE],
        contender_threshold=threshold,
        **opts,
    )
    if ranking.pick is None:
        raise TGuideError(f"no finite {metrics[0]} score in the ranking; pick another metric")
    table = ranking.table
    scored = table[(table.metric == metrics[0]) & table.score.notna()].sort_values("score", ascending=False)
    rank_of = {(r.candidate, r.layer): i + 1 for i, r in enumerate(scored.itertuples())}
    best_layer = {str(c): str(g.iloc[0].layer) for c, g in scored.groupby("candidate", sort=False)}
    probs = ranking.p_best.get(metrics[0], {})
    jobs: dict[tuple[str, str], dict[str, Any]] = {}

    def add(name: str, layer: str, role: str) -> None:
        layer = layer if layer not in ("", _HEAD_LAYER) else ranking.candidates[name]["layers"][-1]
        row = scored[(scored.candidate == name) & (scored.layer == layer)]
        jobs.setdefault(
            (name, layer),
            {
                "candidate": name,
                "spec": ranking.candidates[name]["spec"],
                "layer": layer,
                "metric": metrics[0],
                "predicted_score": float(row.score.iloc[0]) if len(row) else math.nan,
                "p_best": probs.get(name, math.nan),
                "rank": rank_of.get((name, layer), ""),
                "roles": [],
            },
        )["roles"].append(role)

    pick = ranking.pick
    add(pick.candidate, pick.layer, "pick")
    for name in [c for c in pick.contenders if c != pick.candidate][: max_finetunes - 1]:
        add(name, best_layer[name], "contender")
    for name, bp in ranking.baseline_picks.items():
        add(bp.candidate, bp.layer, f"baseline:{name}")
    extra = [b for b in baselines if b in _CHOSEN_HERE]
    if extra:
        names = ranking.candidates
        for extra_job in choose(
            table,
            {n: c["spec"] for n, c in names.items()},
            {n: (c["layers"][-1] if c["layers"] else "") for n, c in names.items()},
            metrics[0],
            top_k=0,
            baselines=extra,
            seed=baseline_seed,
        ):
            for why in extra_job["chosen_by"]:
                add(extra_job["candidate"], extra_job["layer"], why)
    rows, runs = [], []
    for job in jobs.values():
        where = None if out_dir is None else Path(out_dir) / f"{_slug(job['candidate'])}__{_slug(job['layer'])}"
        done = [
            _finetune_once(
                job, target, int(s), epochs, None if where is None else where / f"seed{int(s)}", finetune_options or {}
            )
            for s in seeds
        ]
        runs += done
        accs = [float(r["test_acc"]) for r in done]
        rows.append(
            {
                **{k: v for k, v in job.items() if k != "roles"},
                "test_acc": statistics.fmean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "role": ";".join(job["roles"]),
            }
        )
    pairs = [(r["predicted_score"], r["test_acc"]) for r in rows if _finite(r["predicted_score"])]
    agree: dict[str, Any] = {"n": len(pairs), "spearman": math.nan, "kendall": math.nan}
    if len(pairs) >= 3:
        x, y = zip(*pairs)
        agree.update(spearman=spearman(x, y), kendall=kendall(x, y))
    return GuidedResult(rows=rows, agreement=agree, ranking=ranking, runs=runs)
