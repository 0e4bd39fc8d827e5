"""``report.html``: one self-contained page (inline CSS, inline SVG, a few lines of plain JS; no
network, no library) that fits a 1280-px window.

Sections, top to bottom: a summary card (the pick, how sure, what the baselines would pick, the
saturation flags), a candidate × score heat map of ranks, one per-layer chart per chosen score
(candidates as lines, the bootstrap interval as a band when the ranking has one), a sortable table
with the warnings in view, the predicted-versus-realised view of a ``guided`` run when given, and
the cost per candidate. The data come from :mod:`tguide.select.report`.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

from tguide.select.report_data import (
    baseline_sentences,
    candidate_notes,
    cell_flags,
    confidence_sentence,
    finite,
    flag_sentences,
    fmt,
    guided_rows,
    metric_order,
    rank_matrix,
    score_matrix,
    summary_table,
)
from tguide.select.report_style import CSS, JS
from tguide.select.report_svg import Series, color, hbar, layer_chart

if TYPE_CHECKING:
    from tguide.select.ranking_result import Ranking

__all__ = ["render_html"]


def _e(x: Any) -> str:
    return html.escape(str(x))


def _wrap(name: Any) -> str:
    """A metric or layer name that may break after its underscores and dots (and nowhere else)."""
    return _e(name).replace("_", "_<wbr>").replace(".", ".<wbr>")


def _millions(n: Any) -> str:
    """A parameter count as ``4.2M`` / ``310k`` (``–`` when unknown)."""
    if not finite(n):
        return "–"
    v = float(n)
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else f"{v:.0f}"


def _heat_color(t: float) -> tuple[str, str]:
    """Background and text colour for a rank fraction ``t`` (0 = best, 1 = worst)."""
    a, b = (8, 81, 156), (222, 235, 247)  # dark blue → pale blue
    rgb = tuple(round(x + (y - x) * t) for x, y in zip(a, b))
    return f"rgb{rgb}", "#fff" if t < 0.55 else "#1f2328"


def _summary_card(ranking: Ranking) -> str:
    pick = ranking.pick
    p: Any = getattr(pick, "p_best", None) if pick else None
    contenders = [c for c in (getattr(pick, "contenders", ()) or ()) if pick and c != pick.candidate]
    unsure = bool(contenders) or (finite(p) and float(p) < 0.5)
    cls = "card none" if pick is None else ("card unsure" if unsure else "card")
    parts = [f'<div class="{cls}" id="summary">']
    if pick is None:
        parts.append('<p class="pick"><b>No pick</b>: the first metric has no usable score.</p>')
    else:
        layer = f" at <code>{_e(pick.layer)}</code>" if pick.layer else ""
        parts.append(f'<p class="pick" id="pick">Pick: <b>{_e(pick.candidate)}</b>{layer}</p>')
        parts.append(f'<p class="sub">by {_e(pick.metric)} — {_e(pick.reason)}.</p>')
    parts.append(f'<p class="conf" id="confidence">{_e(confidence_sentence(ranking))}</p>')
    if contenders:
        parts.append(f"<p>Worth fine-tuning too: <b>{_e(', '.join(contenders))}</b>.</p>")
    parts.append('<div class="grid2"><div><h3>What the baselines would pick</h3><ul id="baselines">')
    items = []
    for name, bp in ranking.baseline_picks.items():
        if bp is None:
            continue
        same = pick is not None and bp.candidate == pick.candidate
        cls_ = "agree" if same else "differ"
        items.append(
            f'<li class="{cls_}"><b>{_e(name)}</b>: {_e(bp.candidate)} ({fmt(bp.score)})'
            + (" — agrees" if same else "")
            + "</li>"
        )
    parts.append("".join(items) or "<li>no baseline computed</li>")
    parts.append("</ul>")
    more = [s for s in baseline_sentences(ranking) if "agrees" not in s]
    if more:
        parts.append('<p class="note">' + " ".join(_e(s) for s in more) + "</p>")
    parts.append('</div><div><h3>Saturation and other flags</h3><ul class="flagl" id="flags">')
    flags = flag_sentences(ranking)
    if flags:
        parts.append("".join(f"<li>{_e(s)}</li>" for s in flags))
    elif "flag" in ranking.table.columns and bool(ranking.table.flag.notna().any()):
        parts.append('<li class="agree">none: every score is usable here</li>')
    else:
        parts.append("<li>not checked in this ranking</li>")
    parts.append("</ul></div></div></div>")
    return "".join(parts)


def _heatmap(ranking: Ranking, order: list[str]) -> str:
    ranks = rank_matrix(ranking).reindex(order)
    scores = score_matrix(ranking).reindex(order)
    flagged = cell_flags(ranking)
    metrics = list(ranks.columns)
    first = metrics[0] if metrics else ""
    pick = ranking.pick.candidate if ranking.pick else None
    name_w = 20.0  # % of the width for the candidate's name, the rest shared by the scores
    cw = min(12.0, (100.0 - name_w) / max(1, len(metrics)))
    head = f'<th class="l" style="width:{100 - cw * len(metrics):.2f}%">candidate</th>' + "".join(
        f'<th class="{"first" if m == first else ""}" style="width:{cw:.2f}%">{_wrap(m)}</th>' for m in metrics
    )
    body = []
    for cand in ranks.index:
        cells = [f'<td class="l">{_e(cand)}</td>']
        for m in metrics:
            r, s = ranks.loc[cand, m], scores.loc[cand, m]
            n = int(ranks[m].notna().sum())
            if finite(r):
                bg, fg = _heat_color((float(r) - 1) / max(1, n - 1))
                cells.append(
                    f'<td style="background:{bg};color:{fg}" title="{_e(cand)} / {_e(m)}: {fmt(s)}, rank '
                    f'{int(r)} of {n}">{int(r)}</td>'
                )
            elif (cand, m) in flagged:
                cells.append(f'<td class="flagged" title="{_e(cand)} / {_e(m)}: flagged">{_e(flagged[cand, m])}</td>')
            else:
                cells.append('<td title="no score">–</td>')
        cls = ' class="pickrow"' if cand == pick else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        '<section><h2>Rank of each candidate by each score</h2><table class="heat" id="heatmap">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="note">1 = best; each candidate at its best usable layer; equal scores share a rank; a hatched '
        "cell is flagged (no rank, never picks). Hover a cell for its score. The first score column picks.</p>"
        "</section>"
    )


def _charts(ranking: Ranking, order: list[str]) -> str:
    df = ranking.table
    layered = df[(df.layer != "") & (df.layer != "@output")]
    chosen = [m for m in (ranking.metrics or metric_order(ranking)) if (layered.metric == m).any()]
    if not chosen:
        return ""
    pick = ranking.pick.candidate if ranking.pick else None
    has_ci = {"ci_low", "ci_high"} <= set(df.columns)
    has_flag = "flag" in df.columns
    charts = []
    for m in chosen:
        series = []
        for i, cand in enumerate(order):
            sub = layered[(layered.candidate == cand) & (layered.metric == m)]
            if sub.empty:
                continue
            n = len(sub)
            nan = [math.nan] * n
            series.append(
                Series(
                    name=cand,
                    index=i,
                    x=[k / (n - 1) if n > 1 else 1.0 for k in range(n)],
                    y=[float(v) for v in sub.score],
                    lo=[float(v) for v in sub.ci_low] if has_ci else nan,
                    hi=[float(v) for v in sub.ci_high] if has_ci else nan,
                    flagged=[bool(f) for f in sub.flag.astype(object).fillna("")] if has_flag else [],
                    labels=[str(v) for v in sub.layer],
                    emphasis=cand == pick,
                )
            )
        charts.append(layer_chart(series, title=f"{m} by layer", ylabel=m))
    legend = "".join(
        f'<li data-cand="{_e(c)}"><span class="sw" style="background:{color(i)[0]}"></span>{_e(c)}'
        + (" (pick)" if c == pick else "")
        + "</li>"
        for i, c in enumerate(order)
    )
    band = "the shaded band is the 90% bootstrap interval; " if has_ci and df.ci_low.notna().any() else ""
    return (
        '<section><h2>Score by layer</h2><ul class="legend">' + legend + "</ul>"
        f'<div class="charts" id="charts">{"".join(charts)}</div>'
        f'<p class="note">Each line is one candidate, its layers from first to last; {band}hollow points are '
        "flagged rows; the pick's line is thicker. Hover the legend to single out a candidate.</p></section>"
    )


def _table(ranking: Ranking) -> str:
    table = summary_table(ranking)
    cols = list(table.columns)
    first = cols[2] if len(cols) > 2 else ""
    has_ci = "ci_low" in cols
    has_p = "p_best" in cols
    baselines = [c for c in cols[3:] if c not in ("ci_low", "ci_high", "p_best", "flags", "warnings")]
    cands = ranking.candidates
    pick = ranking.pick.candidate if ranking.pick else None
    widths = [("candidate", 15, "text"), ("best layer", 14, "text"), (first, 7, "num")]
    if has_ci:
        widths.append(("90% interval", 11, "num"))
    if has_p:
        widths.append(("P(best)", 6, "num"))
    widths += [(b, 7, "num") for b in baselines] + [("params", 7, "num")]
    head = "".join(
        f'<th class="{"l" if t == "text" else ""}" data-type="{t}" style="width:{w}%">{_wrap(n)}</th>'
        for n, w, t in widths
    )
    head += '<th class="l" data-type="text">flags &amp; warnings</th>'
    body = []
    for _, r in table.iterrows():
        info = cands.get(r.candidate, {})
        cells = [
            f'<td class="l" title="{_e(info.get("provenance", ""))}">{_e(r.candidate)}</td>',
            f'<td class="l">{_wrap(r["best layer"])}</td>',
            f'<td data-v="{r[first]}">{fmt(r[first], 3)}</td>',
        ]
        if has_ci:
            cells.append(f'<td data-v="{r.ci_low}">{fmt(r.ci_low, 3)} – {fmt(r.ci_high, 3)}</td>')
        if has_p:
            cells.append(f'<td data-v="{r.p_best}">{fmt(r.p_best, 2)}</td>')
        cells += [f'<td data-v="{r[b]}">{fmt(r[b], 3)}</td>' for b in baselines]
        params = info.get("num_params", "")
        cells.append(f'<td data-v="{params}">{_millions(params)}</td>')
        flags, warnings = candidate_notes(ranking, r.candidate)
        badges = "".join(f'<span class="badge">{_e(f)}</span>' for f in flags)
        warns = "<br>".join(_e(w) for w in warnings)
        cells.append(f'<td class="warn">{badges}{warns}</td>')
        cls = "candidate-row pickrow" if r.candidate == pick else "candidate-row"
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return (
        '<section><h2>Candidates</h2><table class="sortable" id="candidates">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="note">Click a column to sort. {_e(first)} and its interval are at the best usable layer; '
        "baselines at their own best layer; hover a name for its provenance.</p></section>"
    )


def _guided(rows: list[dict[str, Any]], ranking: Ranking) -> str:
    if not rows:
        return ""
    from tguide.select.correlation import kendall

    rows = sorted(rows, key=lambda r: -float(r["test_acc"]) if finite(r["test_acc"]) else math.inf)
    accs = [float(r["test_acc"]) for r in rows if finite(r["test_acc"])]
    stds = [float(r["test_acc_std"]) if finite(r["test_acc_std"]) else 0.0 for r in rows if finite(r["test_acc"])]
    lo = max(0.0, min((a - s for a, s in zip(accs, stds)), default=0.0) - 0.02)
    hi = min(1.0, max((a + s for a, s in zip(accs, stds)), default=1.0) + 0.02)
    notes = []
    if accs:
        top = rows[0]
        notes.append(f"Best realised: {top['candidate']} ({top['role']}) at {fmt(top['test_acc'])}.")
        mine = [r for r in rows if r["role"] == "pick" and finite(r["test_acc"])]
        if mine and mine[0]["candidate"] != top["candidate"]:
            gap = float(top["test_acc"]) - float(mine[0]["test_acc"])
            notes.append(f"The pick {mine[0]['candidate']} realised {fmt(mine[0]['test_acc'])} ({gap:.3f} below).")
    metric = ranking.pick.metric if ranking.pick else None
    pairs = [
        (float(r["predicted_score"]), float(r["test_acc"]))
        for r in rows
        if r["metric"] == metric and finite(r["predicted_score"]) and finite(r["test_acc"])
    ]
    if len(pairs) >= 3:
        x, y = zip(*pairs)
        notes.append(f"Kendall τ of {metric} against realised accuracy over {len(pairs)} rows: {kendall(x, y):+.2f}.")
    else:
        notes.append(f"Rank agreement needs ≥ 3 fine-tuned rows scored by {metric} (have {len(pairs)}).")
    head = (
        '<th class="l" data-type="text" style="width:15%">candidate</th>'
        '<th class="l" data-type="text" style="width:17%">role</th>'
        '<th class="l" data-type="text" style="width:11%">layer</th>'
        '<th class="l" data-type="text" style="width:12%">metric</th>'
        '<th data-type="num" style="width:9%">predicted</th><th data-type="num" style="width:7%">P(best)</th>'
        '<th data-type="num" style="width:5%">rank</th><th data-type="num" style="width:11%">test acc ± sd</th>'
        f'<th data-type="num">realised ({lo:.2f} – {hi:.2f})</th>'
    )
    body = []
    for r in rows:
        role = str(r["role"])
        col = "#d55e00" if role == "pick" else "#0072b2" if role == "contender" else "#7f7f7f"
        acc = float(r["test_acc"]) if finite(r["test_acc"]) else math.nan
        sd = float(r["test_acc_std"]) if finite(r["test_acc_std"]) else math.nan
        body.append(
            f'<tr><td class="l">{_e(r["candidate"])}</td><td class="l">{_e(role)}</td>'
            f'<td class="l">{_e(r["layer"])}</td><td class="l">{_e(r["metric"])}</td>'
            f'<td data-v="{r["predicted_score"]}">{fmt(r["predicted_score"])}</td>'
            f'<td data-v="{r["p_best"]}">{fmt(r["p_best"], 2)}</td><td data-v="{r["rank"]}">{fmt(r["rank"])}</td>'
            f'<td data-v="{acc}">{fmt(acc)} ± {fmt(sd, 2)}</td>'
            f'<td data-v="{acc}">{hbar(acc, sd, lo, hi, col=col)}</td></tr>'
        )
    return (
        '<section id="guided"><h2>Predicted versus realised (fine-tuned)</h2>'
        f'<p>{_e(" ".join(notes))}</p><table class="sortable" id="guided-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="note">Sorted by realised test accuracy (mean over seeds ± sd); orange = the pick, blue = '
        "contenders, grey = baselines' picks.</p></section>"
    )


def _timing(ranking: Ranking) -> str:
    timing = ranking.candidate_timings()
    if not timing:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(k)}</td><td>{v["extract_s"]:.2f}</td><td>{v["score_s"]:.2f}</td></tr>'
        for k, v in timing.items()
    )
    return (
        '<section><h2>Cost</h2><table id="timing" style="width:auto;min-width:50%"><thead><tr>'
        '<th class="l">candidate</th><th>extract s</th><th>score s</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def render_html(ranking: Ranking, title: str | None = None, *, guided: Any = None) -> str:
    """The page, as one string (see the module doc); ``guided`` as for
    :func:`tguide.select.report.write_report`."""
    t = ranking.target
    title = title or f"tguide ranking on {t.get('name', '?')}"
    order = [str(c) for c in summary_table(ranking).candidate]
    null = f"; null: {ranking.null} label shuffles" if ranking.null else ""
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">Target {_e(t.get("name", "?"))}: {_e(t.get("samples", "?"))} samples, '
        f"{_e(t.get('classes', '?'))} classes; {len(order)} candidates; scores: {_e(', '.join(ranking.metrics))}"
        f"{_e(null)}.</p>",
        _summary_card(ranking),
        _heatmap(ranking, order),
        _charts(ranking, order),
        _table(ranking),
        _guided(guided_rows(guided), ranking),
        _timing(ranking),
        '<p class="note">Full long-format table: <code>ranking.csv</code>; text version: '
        f"<code>ranking.md</code>.</p></main><script>{JS}</script></body></html>",
    ]
    return "\n".join(p for p in parts if p)
