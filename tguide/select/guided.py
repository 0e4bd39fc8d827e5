"""Transferability-guided fine-tuning as a function: rank, fine-tune every contender, compare.

:func:`guided` ranks the candidates with :func:`tguide.select.rank.rank`, fine-tunes every
candidate whose P(best) clears a threshold (the pick's ``contenders``, from the paired bootstrap of
:mod:`tguide.select.bootstrap`) and each baseline's pick with :func:`tguide.select.finetune.finetune`,
and reports predicted score beside realised accuracy. No config is edited and no CLI is called;
the ``recipe=guided`` runner is :mod:`tguide.select.guided_recipe`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tguide.errors import TGuideError
from tguide.select.guided_recipe import _HEAD_LAYER, _finite, _slug

__all__ = ["GuidedResult", "guided"]


@dataclass
class GuidedResult:
    """What :func:`guided` returns: one row per fine-tuned (candidate, layer) with keys ``candidate,
    spec, layer, metric, predicted_score, p_best, rank, test_acc, test_acc_std, role`` (role
    ``"pick"``, ``"contender"`` or ``"baseline:<name>"``), the rank agreement of predicted score and
    realised accuracy (``n``, ``spearman``, ``kendall``) and the ranking it came from."""

    rows: list[dict[str, Any]]
    agreement: dict[str, Any]
    ranking: Any


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
    rank_options: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
) -> GuidedResult:
    """Rank ``candidates`` on ``target``, fine-tune every contender of the pick and the baselines' picks.

    The contenders are the candidates whose P(best) by ``metric`` (paired bootstrap,
    :mod:`tguide.select.bootstrap`) is at least ``threshold`` (the pick itself always; at most
    ``max_finetunes``, most probable first), each cut at its best-scoring layer; a clear pick
    fine-tunes one candidate, a too-close-to-call one all that are close. Each baseline of
    ``rank``'s baseline picks (``source_accuracy``, ``knn``, ...) adds its choice. Every
    (candidate, layer) is fine-tuned once per seed with :func:`tguide.select.finetune.finetune`
    (``epochs`` and ``finetune_options``; ``out_dir/<candidate>__<layer>/seed<S>`` keeps the best
    checkpoint); rows then carry the realised test accuracy beside the predicted score.
    """
    from tguide.select.correlation import kendall, spearman
    from tguide.select.finetune import finetune
    from tguide.select.rank import rank

    if max_finetunes < 1:
        raise TGuideError(f"max_finetunes must be ≥ 1, got {max_finetunes}")
    opts = dict(rank_options or {})
    opts.setdefault("bootstrap", 100)  # the contenders need P(best) (rank's default, said here)
    metrics = [metric] if metric else list(opts.pop("metrics", ["logme"]))
    opts.pop("metrics", None)
    ranking = rank(
        candidates, target, metrics=metrics, baselines=list(baselines), contender_threshold=threshold, **opts
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
    rows = []
    for job in jobs.values():
        accs = []
        for s in seeds:
            where = None if out_dir is None else Path(out_dir) / f"{_slug(job['candidate'])}__{_slug(job['layer'])}"
            res = finetune(
                job["spec"] or job["candidate"],
                target,
                layer=job["layer"],
                epochs=int(epochs),
                seed=int(s),
                out_dir=None if where is None else where / f"seed{int(s)}",
                **dict(finetune_options or {}),
            )
            accs.append(float(res.test_acc))
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
    return GuidedResult(rows=rows, agreement=agree, ranking=ranking)
