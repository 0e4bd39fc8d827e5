"""What ``ranking.md`` and ``report.html`` show, computed once from a
:class:`~tguide.select.ranking_result.Ranking`: the per-candidate table, the candidate × score ranks,
the pick's confidence, the baselines' picks, the saturation flags and the rows of a ``guided`` run.

Columns and fields added by later producers are optional: ``flag``, ``ci_low``, ``ci_high`` and
``p_best`` of the long table, ``Pick.p_best`` / ``contenders`` / ``confidence`` and
``Ranking.p_best`` are used when present and left out (not shown as blanks) when absent.

Ranks (1 = best) are taken per score over each candidate's best *usable* layer: a row with a
non-empty ``flag`` (saturated, degenerate, tie, not comparable) never takes a rank, as it never
makes a pick; equal scores share the smallest rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tguide.select.ranking_result import Ranking

__all__ = [
    "GUIDED_KEYS",
    "baseline_sentences",
    "candidate_notes",
    "cell_flags",
    "confidence_sentence",
    "finite",
    "flag_sentences",
    "fmt",
    "guided_rows",
    "metric_order",
    "p_best_of",
    "rank_matrix",
    "score_matrix",
    "summary_table",
    "usable",
]

GUIDED_KEYS = (
    "candidate",
    "spec",
    "layer",
    "metric",
    "predicted_score",
    "p_best",
    "rank",
    "test_acc",
    "test_acc_std",
    "role",
)


def fmt(x: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant digits, ``–`` for NaN / missing, other values as text."""
    if x is None or x == "":
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}g}"


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def usable(df: Any) -> Any:
    """Rows with a finite score and no ``flag`` (every row when the table has no ``flag`` column)."""
    ok = df.score.notna()
    if "flag" in df.columns:
        ok &= df.flag.astype(object).fillna("").astype(str) == ""
    return df[ok]


def metric_order(ranking: Ranking) -> list[str]:
    """The scores asked for (in order), then every other metric of the table (baselines last)."""
    df = ranking.table
    asked = list(ranking.metrics or [])
    rest = [m for m in dict.fromkeys(df.metric) if m not in asked]
    kind = dict(zip(df.metric, df.kind))
    return asked + [m for m in rest if kind.get(m) != "baseline"] + [m for m in rest if kind.get(m) == "baseline"]


def _best_rows(ranking: Ranking, metric: str) -> dict[str, Any]:
    """candidate → its best usable row for ``metric`` (highest score; the earlier row on ties)."""
    sub = usable(ranking.table[ranking.table.metric == metric]).sort_values("score", ascending=False, kind="stable")
    return {str(c): r for c, r in sub.groupby("candidate", sort=False).head(1).set_index("candidate").iterrows()}


def score_matrix(ranking: Ranking) -> Any:
    """candidate × metric: each candidate's best usable score (NaN where none), rows in table order."""
    import pandas as pd

    cands = list(dict.fromkeys(ranking.table.candidate))
    cols = {}
    for metric in metric_order(ranking):
        best = _best_rows(ranking, metric)
        cols[metric] = [float(best[c].score) if c in best else math.nan for c in cands]
    return pd.DataFrame(cols, index=pd.Index(cands, name="candidate"))


def rank_matrix(ranking: Ranking) -> Any:
    """candidate × metric ranks of :func:`score_matrix` (1 = best, ties share the smallest rank, NaN
    where the candidate has no usable score)."""
    scores = score_matrix(ranking)
    return scores.rank(axis=0, ascending=False, method="min")


def cell_flags(ranking: Ranking) -> dict[tuple[str, str], str]:
    """(candidate, metric) → flag, for the cells whose every finite row is flagged."""
    df = ranking.table
    if "flag" not in df.columns:
        return {}
    out: dict[tuple[str, str], str] = {}
    for (cand, metric), sub in df[df.score.notna()].groupby(["candidate", "metric"], sort=False):
        flags = [str(f) for f in sub.flag.astype(object).fillna("") if str(f)]
        if flags and len(flags) == len(sub):
            out[(str(cand), str(metric))] = max(set(flags), key=flags.count)
    return out


def p_best_of(ranking: Ranking, metric: str) -> dict[str, float]:
    """candidate → P(best) for ``metric``: ``Ranking.p_best`` when set, else the table's ``p_best``."""
    given = (getattr(ranking, "p_best", None) or {}).get(metric)
    if given:
        return {str(k): float(v) for k, v in given.items()}
    df = ranking.table
    if "p_best" not in df.columns:
        return {}
    sub = df[(df.metric == metric) & df.p_best.notna()]
    return {str(c): float(v) for c, v in sub.groupby("candidate", sort=False).p_best.max().items()}


def summary_table(ranking: Ranking) -> Any:
    """One row per candidate, in ranking order of the first metric: its best layer and score by the
    first metric (with ``ci_low``/``ci_high`` and ``p_best`` when the ranking has them), every
    baseline's best score, the flags and the warnings."""
    import pandas as pd

    df = ranking.table
    order = metric_order(ranking)
    first = order[0] if order else ""
    best = _best_rows(ranking, first) if first else {}
    pbest = p_best_of(ranking, first) if first else {}
    has_ci = {"ci_low", "ci_high"} <= set(df.columns) and bool(df.ci_low.notna().any())
    baselines = [m for m in order if (df[df.metric == m].kind == "baseline").all() and m != first]
    scores = score_matrix(ranking)
    rows = []
    for cand in scores.index:
        b = best.get(cand)
        row: dict[str, Any] = {"candidate": cand, "best layer": str(b.layer) if b is not None else ""}
        row[first] = float(b.score) if b is not None else math.nan
        if has_ci:
            row["ci_low"] = float(b.ci_low) if b is not None else math.nan
            row["ci_high"] = float(b.ci_high) if b is not None else math.nan
        if pbest:
            row["p_best"] = pbest.get(cand, math.nan)
        for m in baselines:
            row[m] = float(scores.loc[cand, m])
        flags, warnings = candidate_notes(ranking, cand)
        row["flags"] = "; ".join(flags)
        row["warnings"] = "; ".join(warnings)
        rows.append(row)
    out = pd.DataFrame(rows)
    if first and len(out):
        out = out.sort_values(first, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    return out


def candidate_notes(ranking: Ranking, candidate: str) -> tuple[list[str], list[str]]:
    """A candidate's flags (``"metric flag"``, once each) and its other warnings (``"metric: text"``,
    once each). The reason of a flagged row is said once per metric by :func:`flag_sentences`, so it
    is not repeated here."""
    df = ranking.table
    sub = df[df.candidate == candidate]
    flag = sub.flag.astype(object).fillna("").astype(str) if "flag" in df.columns else [""] * len(sub)
    flags, warnings = [], []
    for m, f, w in zip(sub.metric, flag, sub.warning):
        if f:
            flags.append(f"{m} {f}")
        elif isinstance(w, str) and w:
            warnings.append(w if w.startswith(str(m)) else f"{m}: {w}")
    return list(dict.fromkeys(flags)), list(dict.fromkeys(warnings))


def confidence_sentence(ranking: Ranking) -> str:
    """How sure the pick is: ``Pick.confidence`` when set, else one built from ``Pick.p_best``, else
    a sentence saying no uncertainty was computed."""
    pick = ranking.pick
    if pick is None:
        return "No pick: the first metric has no usable score."
    said = str(getattr(pick, "confidence", "") or "")
    if said:
        return said
    p: Any = getattr(pick, "p_best", None)
    contenders = [c for c in getattr(pick, "contenders", ()) or () if c != pick.candidate]
    if finite(p):
        s = f"P(best) of {pick.candidate} by {pick.metric}: {float(p):.2f}"
        return s + (f"; also in contention: {', '.join(contenders)}." if contenders else ".")
    return "No uncertainty computed for this ranking (no bootstrap): treat close scores as ties."


def baseline_sentences(ranking: Ranking) -> list[str]:
    """Where the first metric's pick differs from, or loses to, a baseline's pick (one sentence each)."""
    pick, df = ranking.pick, ranking.table
    if pick is None:
        return []
    out = []
    for name, bp in ranking.baseline_picks.items():
        if bp is None:
            continue
        if bp.candidate == pick.candidate:
            out.append(f"{name} agrees: it also picks {pick.candidate}.")
            continue
        mine = df[(df.candidate == pick.candidate) & (df.metric == name) & df.score.notna()]
        theirs = f"{bp.score:.4g}"
        if mine.empty:
            out.append(
                f"{name} would pick {bp.candidate} ({theirs}) instead of {pick.candidate}, "
                f"for which {name} is not available."
            )
        else:
            own = float(mine.score.max())
            verdict = "loses to" if own < bp.score else "ties with"
            out.append(
                f"{name} would pick {bp.candidate} instead: {pick.metric}'s pick {pick.candidate} "
                f"{verdict} it on {name} ({own:.4g} vs {theirs})."
            )
    return out


def flag_sentences(ranking: Ranking) -> list[str]:
    """One sentence per (metric, flag): for how many candidates, and the first reason given."""
    df = ranking.table
    if "flag" not in df.columns:
        return []
    flagged = df[df.flag.astype(object).fillna("").astype(str) != ""]
    n = df.candidate.nunique()
    out = []
    for (metric, flag), sub in flagged.groupby(["metric", "flag"], sort=False):
        reasons = [w for w in sub.warning if isinstance(w, str) and w]
        k = sub.candidate.nunique()
        out.append(
            f"{metric} {flag} for {k} of {n} candidate{'s' if n != 1 else ''} ({len(sub)} row"
            f"{'s' if len(sub) != 1 else ''}); those rows make no pick" + (f": {reasons[0]}" if reasons else "") + "."
        )
    return out


def guided_rows(guided: Any) -> list[dict[str, Any]]:
    """The rows of a ``guided`` run: a ``GuidedResult`` (its ``.rows``), a mapping with ``"rows"``, or
    the rows themselves (mappings with the keys of :data:`GUIDED_KEYS`; missing ones become ``""``)."""
    if guided is None:
        return []
    rows = getattr(guided, "rows", None)
    if rows is None and isinstance(guided, Mapping):
        rows = guided.get("rows")
    if rows is None and isinstance(guided, Sequence) and not isinstance(guided, str | bytes):
        rows = guided
    if rows is None or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(
            f"guided= must be a GuidedResult, a mapping with 'rows', or a list of row dicts "
            f"(keys {', '.join(GUIDED_KEYS)}); got {type(guided).__name__}"
        )
    out = []
    for r in rows:
        if "candidate" not in r:
            raise ValueError(f"a guided row has no 'candidate' (keys: {sorted(r)}); pass GuidedResult.rows")
        out.append({k: r.get(k, "") for k in GUIDED_KEYS})
    return out
