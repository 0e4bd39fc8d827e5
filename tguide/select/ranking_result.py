"""What :func:`tguide.select.rank.rank` returns: a typed :class:`Ranking` with its :class:`Pick`.

The long table keeps one row per (candidate, layer, metric) with the columns of :data:`COLUMNS`;
the pick, the baselines' picks, the warnings and the timings are fields of the result (not
``DataFrame.attrs``, which pandas drops on most operations). ``to_csv``, ``to_markdown`` and
``write_report`` render through :mod:`tguide.select.report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "EXCLUDED_FLAGS",
    "Pick",
    "Ranking",
    "best_pick",
    "mark_ties",
    "no_pick_reason",
    "table_warnings",
    "with_confidence",
]

COLUMNS = [
    "candidate",
    "layer",
    "metric",
    "kind",
    "score",
    "z",
    "null_mean",
    "null_std",
    "flag",
    "warning",
    "ci_low",
    "ci_high",
    "p_best",
]

#: flags of rows that never make a pick (``"tie"`` rows are eligible, but a tie at the top is no pick)
EXCLUDED_FLAGS = ("saturated", "degenerate", "not_comparable")
TIE_RTOL = 1e-9  # scores equal to this relative tolerance are a tie


@dataclass(frozen=True)
class Pick:
    """The best (candidate, layer) by one selector (a score or a baseline; higher is better).

    Attributes:
        candidate: the candidate's name.
        spec: the spec that ``create_candidate(spec)`` makes the candidate from again (``""`` for
            an in-memory module).
        layer: the layer whose score won (``"@output"`` for head scores, ``""`` for per-model
            baselines such as source accuracy).
        metric: the selector that made the pick.
        score: its score there.
        reason: one sentence a person reads.
        p_best: the probability that this candidate is the best one by ``metric`` (paired
            bootstrap over the target samples, :mod:`tguide.select.bootstrap`); ``None`` without
            a bootstrap.
        contenders: the candidates whose P(best) clears the threshold, most probable first
            (``()`` without a bootstrap): the ones worth fine-tuning.
        confidence: one sentence on how sure the pick is ("resnet56_cifar10: clear pick, P(best)
            0.97" or "a or b: too close to call, P(best) 0.55 / 0.41 — fine-tune both").
    """

    candidate: str
    spec: str
    layer: str
    metric: str
    score: float
    reason: str
    p_best: float | None = None
    contenders: tuple[str, ...] = ()
    confidence: str = ""


@dataclass
class Ranking:
    """The result of :func:`tguide.rank`.

    Attributes:
        table: long form, one row per (candidate, layer, metric): columns :data:`COLUMNS`
            (``kind`` is ``"score"`` or ``"baseline"``; ``z``, ``null_mean``, ``null_std`` are NaN
            without a null; ``flag`` is ``""`` or one of ``"saturated"``, ``"degenerate"``, ``"tie"``,
            ``"not_comparable"``, with its one-line reason in ``warning``; ``ci_low``, ``ci_high`` the 90%
            bootstrap interval of the score and ``p_best`` the row's candidate's P(best) for that metric,
            NaN without a bootstrap).
        pick: the best (candidate, layer) by the first metric, ``None`` when it has no finite score.
        baseline_picks: what each baseline would pick instead (``source_accuracy``, ``knn``,
            ``linear_probe`` when available).
        warnings: one line each (``candidate / layer / metric: what``), in table order.
        timings: seconds: ``total``, ``extract`` and ``score`` summed over the candidates, and
            ``extract/NAME``, ``score/NAME`` per candidate.
        metrics: the scores asked for, in order (the first one picks).
        target: ``{"name", "samples", "classes"}`` of the target the features came from.
        candidates: name → ``{"spec", "provenance", "num_params", "head", "source_accuracy", "layers"}``.
        null: label shuffles per score (0: none).
        cache: ``{"hits", "misses"}`` of the feature cache.
        p_best: metric → candidate → P(best) (paired bootstrap; ``{}`` without one).
    """

    table: Any  # pandas.DataFrame
    pick: Pick | None
    baseline_picks: dict[str, Pick]
    warnings: list[str]
    timings: dict[str, float]
    metrics: list[str] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    null: int = 0
    cache: dict[str, int] = field(default_factory=dict)
    p_best: dict[str, dict[str, float]] = field(default_factory=dict)

    def __repr__(self) -> str:
        pick = (
            f"{self.pick.candidate}" + (f" @ {self.pick.layer}" if self.pick.layer else "") + f" by {self.pick.metric}"
            if self.pick is not None
            else "none"
        )
        return (
            f"Ranking(target={self.target.get('name', '?')!r}, candidates={len(self.candidates)}, "
            f"rows={len(self.table)}, pick={pick}, warnings={len(self.warnings)})"
        )

    def candidate_timings(self) -> dict[str, dict[str, float]]:
        """``{candidate: {"extract_s", "score_s"}}`` from :attr:`timings`."""
        out: dict[str, dict[str, float]] = {}
        for key, seconds in self.timings.items():
            part, sep, name = key.partition("/")
            if sep and part in ("extract", "score"):
                out.setdefault(name, {"extract_s": 0.0, "score_s": 0.0})[f"{part}_s"] = float(seconds)
        return out

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the long table to ``path`` (atomically; columns :data:`COLUMNS`); returns the path."""
        from tguide.select.report import ranking_csv, write_atomic

        out = Path(path)
        write_atomic([(out, ranking_csv(self))])
        return out

    def to_markdown(self) -> str:
        """``ranking.md``'s text: the target, the pick and why, one row per candidate, the baselines."""
        from tguide.select.report import render_markdown

        return render_markdown(self)

    def write_report(self, out_dir: str | os.PathLike[str], *, wandb_run: Any = None) -> dict[str, Path]:
        """Write ``ranking.csv``, ``ranking.md`` and a self-contained ``report.html`` into ``out_dir``
        (atomically); returns ``{file name: path}``. Given a W&B run, also logs the tables."""
        from tguide.select.report import write_report as write_reports

        return {p.name: p for p in write_reports(self, out_dir, wandb_run=wandb_run)}


def _eligible(table: Any, metric: str) -> Any:
    """The rows of ``metric`` that may make a pick (finite, not flagged out), best first (stable)."""
    sub = table[(table.metric == metric) & table.score.notna()]
    if "flag" in sub.columns:
        sub = sub[~sub.flag.isin(EXCLUDED_FLAGS)]
    return sub.sort_values("score", ascending=False, kind="stable")


def _top_group(sub: Any) -> Any:
    """The rows of ``sub`` (sorted best first) equal to its best score to a relative :data:`TIE_RTOL`."""
    if sub.empty:
        return sub
    best = float(sub.score.iloc[0])
    same = [abs(float(v) - best) <= TIE_RTOL * max(abs(float(v)), abs(best)) for v in sub.score]
    return sub[same]


def _tie_text(group: Any) -> str:
    where = ", ".join(f"{r.candidate}" + (f" @ {r.layer}" if r.layer else "") for r in group.itertuples(index=False))
    return (
        f"tie: {len(group)} rows score {float(group.score.iloc[0]):.4g} (equal to {TIE_RTOL:g}): {where}; "
        "not broken by candidate order"
    )


def _is_tie(group: Any) -> bool:
    return group.candidate.nunique() > 1


def best_pick(table: Any, metric: str, specs: Mapping[str, str] | None = None) -> Pick | None:
    """Best candidate × layer by ``metric`` (higher is better), with a sentence saying why.

    Rows flagged ``saturated``, ``degenerate`` or ``not_comparable`` never make the pick. ``None`` when
    ``metric`` has no eligible finite score, or when its best rows are a tie between different candidates
    (equal to a relative :data:`TIE_RTOL`; a tie is not broken by the candidates' order).
    :func:`no_pick_reason` says which.
    """
    sub = _eligible(table, metric)
    if sub.empty or _is_tie(_top_group(sub)):
        return None
    best = sub.iloc[0]
    others = sub[sub.candidate != best.candidate]
    where = f" on layer {best.layer}" if best.layer else ""
    reason = f"highest {metric} ({best.score:.4g}){where}"
    if not others.empty:
        runner = others.iloc[0]
        reason += f"; next best candidate {runner.candidate} scores {runner.score:.4g}"
    if not math.isnan(float(best.z)):
        reason += f"; z = {best.z:.1f} against the label-shuffle null"
    if "flag" in table.columns and (flagged := table[(table.metric == metric) & table.flag.isin(EXCLUDED_FLAGS)]).size:
        reason += f"; {len(flagged)} flagged row(s) left out ({', '.join(sorted(set(flagged.flag)))})"
    return Pick(
        candidate=str(best.candidate),
        spec=str((specs or {}).get(best.candidate, "")),
        layer=str(best.layer),
        metric=metric,
        score=float(best.score),
        reason=reason,
    )


def no_pick_reason(table: Any, metric: str) -> str:
    """Why :func:`best_pick` gives no pick for ``metric`` (``""`` when it gives one)."""
    sub = _eligible(table, metric)
    if not sub.empty:
        group = _top_group(sub)
        return _tie_text(group) if _is_tie(group) else ""
    mine = table[table.metric == metric]
    flagged = mine[mine.flag.isin(EXCLUDED_FLAGS)] if "flag" in mine.columns else mine.iloc[0:0]
    if flagged.empty:
        return f"{metric} has no finite score"
    first = next((w for w in flagged.warning if isinstance(w, str) and w), "")
    kinds = ", ".join(f"{n} {k}" for k, n in flagged.flag.value_counts().sort_index().items())
    return f"every {metric} row is flagged ({kinds})" + (f": {first.split('; tie:')[0]}" if first else "")


def mark_ties(table: Any) -> None:
    """Flag ``"tie"`` (in place) the best rows of each metric when they tie between candidates; rows
    flagged out that tie at their own best get the tie noted in their ``warning``."""
    if "flag" not in table.columns:
        table["flag"] = ""
    for metric in table.metric.unique():
        group = _top_group(_eligible(table, metric))
        if _is_tie(group):
            for i in group.index:
                table.at[i, "flag"] = "tie"
                table.at[i, "warning"] = "; ".join(w for w in (table.at[i, "warning"], _tie_text(group)) if w)
        out = table[(table.metric == metric) & table.score.notna() & table.flag.isin(EXCLUDED_FLAGS)]
        group = _top_group(out.sort_values("score", ascending=False, kind="stable"))
        if _is_tie(group):
            for i in group.index:
                table.at[i, "warning"] = "; ".join(w for w in (table.at[i, "warning"], _tie_text(group)) if w)


def table_warnings(table: Any) -> list[str]:
    """The table's non-empty warnings, one line each (``candidate / layer / metric: warning``)."""
    out = []
    for row in table.itertuples(index=False):
        if isinstance(row.warning, str) and row.warning:
            where = " / ".join(str(p) for p in (row.candidate, row.layer, row.metric) if p)
            out.append(f"{where}: {row.warning}")
    return out


def with_confidence(pick: Pick | None, p_best: Mapping[str, float], threshold: float = 0.1) -> Pick | None:
    """``pick`` with its P(best), its contenders (candidates with P(best) ≥ ``threshold``, most
    probable first) and a sentence on how sure it is; ``pick`` unchanged without probabilities."""
    if pick is None or not p_best:
        return pick
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the contender threshold must be in (0, 1], got {threshold}")
    order = sorted(p_best, key=lambda c: -p_best[c])
    contenders = tuple(c for c in order if p_best[c] >= threshold) or (order[0],)
    mine = float(p_best.get(pick.candidate, 0.0))
    probs = " / ".join(f"{p_best[c]:.2f}" for c in contenders)
    if len(contenders) == 1 and contenders[0] == pick.candidate:
        sentence = f"{pick.candidate}: clear pick, P(best) {mine:.2f}"
    elif len(contenders) == 1:
        sentence = (
            f"{contenders[0]}: P(best) {probs}, although {pick.candidate} scores highest on the full sample "
            f"(P(best) {mine:.2f}) — fine-tune {contenders[0]}"
        )
    else:
        both = "both" if len(contenders) == 2 else f"all {len(contenders)}"
        sentence = (
            f"{', '.join(contenders[:-1])} or {contenders[-1]}: too close to call, P(best) {probs} — fine-tune {both}"
        )
    return replace(pick, p_best=mine, contenders=contenders, confidence=sentence)
