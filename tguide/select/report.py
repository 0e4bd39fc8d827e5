"""Reports of a :class:`~tguide.select.ranking_result.Ranking`: ``ranking.csv``, ``ranking.md``, a
self-contained ``report.html``, W&B tables.

``report.html`` is one page with no external assets and no JavaScript: matplotlib plots are
embedded as base64 PNG. It shows the pick and why, one table row per candidate (its best
layer by the first metric, every metric, the baselines), per-candidate scores with the
label-shuffle null band (when a null was computed), score against relative layer depth, and a
sentence whenever a baseline (source accuracy, kNN, linear probe) would pick another candidate
or beats the metric's pick.

All files are rendered in memory first and then written atomically (temporary file +
``os.replace``), so an error leaves no half-written report.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Ranking calls this module; this module only reads its fields
    from tguide.select.ranking_result import Ranking

__all__ = [
    "baseline_sentences",
    "ranking_csv",
    "render_html",
    "render_markdown",
    "summary_table",
    "write_atomic",
    "write_reports",
]


def _fmt(x: Any, digits: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}g}"


def summary_table(ranking: Ranking) -> Any:
    """One row per candidate: the best layer by the first metric, and each metric's / baseline's
    best score over the layers (a wide DataFrame, in ranking order of the first metric)."""
    import pandas as pd

    df = ranking.table
    metrics: list[str] = list(ranking.metrics or [m for m in df.metric.unique()])
    first = metrics[0]
    rows = []
    for cand in dict.fromkeys(df.candidate):
        sub = df[df.candidate == cand]
        row: dict[str, Any] = {"candidate": cand}
        f = sub[(sub.metric == first) & sub.score.notna()].sort_values("score", ascending=False, kind="stable")
        row["best layer"] = f.iloc[0].layer if not f.empty else ""
        for metric in dict.fromkeys(list(metrics) + [m for m in sub.metric.unique() if m not in metrics]):
            m = sub[(sub.metric == metric) & sub.score.notna()]
            row[metric] = float(m.score.max()) if not m.empty else math.nan
        row["warnings"] = "; ".join(sorted({w for w in sub.warning if isinstance(w, str) and w}))
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(first, ascending=False, kind="stable", na_position="last").reset_index(drop=True)


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


def render_markdown(ranking: Ranking) -> str:
    """``ranking.md``: target, pick and why, the per-candidate table, baselines, warnings."""
    t = ranking.target
    pick = ranking.pick
    lines = [
        f"# Ranking on {t.get('name', '?')} ({t.get('samples', '?')} samples, {t.get('classes', '?')} classes)",
        "",
    ]
    if pick:
        lines += [
            f"**Pick: {pick.candidate}**" + (f", layer `{pick.layer}`" if pick.layer else "") + f" — {pick.reason}.",
            "",
        ]
    else:
        lines += ["**No pick**: the first metric has no finite score.", ""]
    table = summary_table(ranking)
    cols = list(table.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if c in ("candidate", "best layer", "warnings") else "---:" for c in cols) + "|")
    for _, r in table.iterrows():
        lines.append(
            "| "
            + " | ".join(
                _fmt(r[c]) if c not in ("candidate", "best layer", "warnings") else str(r[c]).replace("|", "/")
                for c in cols
            )
            + " |"
        )
    sentences = baseline_sentences(ranking)
    if sentences:
        lines += ["", "Baselines:", ""] + [f"- {s}" for s in sentences]
    lines += ["", "Long format: `ranking.csv` (candidate, layer, metric, kind, score, z, ...).", ""]
    return "\n".join(lines)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(ranking: Ranking) -> list[tuple[str, str]]:
    """``[(caption, base64 png)]``: scores per candidate with the null band; score vs layer depth."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = ranking.table
    metrics = list(ranking.metrics)
    out: list[tuple[str, str]] = []
    table = summary_table(ranking)
    first = metrics[0] if metrics else None
    if first is not None and table[first].notna().any():
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(table) + 2), 3.2))
        names = list(table.candidate)
        best = []
        for cand, layer in zip(table.candidate, table["best layer"]):
            row = df[(df.candidate == cand) & (df.metric == first) & (df.layer == layer)]
            best.append(row.iloc[0] if not row.empty else None)
        ys = [float(r.score) if r is not None else math.nan for r in best]
        ax.bar(range(len(names)), ys, color="#4c72b0", label=first)
        band = [(float(r.null_mean), float(r.null_std)) if r is not None else (math.nan, math.nan) for r in best]
        if any(not math.isnan(m) for m, _ in band):
            for i, (m, s) in enumerate(band):
                if not math.isnan(m):
                    ax.fill_between(
                        [i - 0.45, i + 0.45],
                        m - 2 * s,
                        m + 2 * s,
                        color="#dd8452",
                        alpha=0.45,
                        label="null mean ± 2 sd" if i == 0 else None,
                    )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(first)
        ax.set_title(f"{first} per candidate (best layer)")
        ax.legend(fontsize=8)
        out.append(
            (
                f"{first} of each candidate at its best layer"
                + (" with the label-shuffle null band" if ranking.null else ""),
                _png(fig),
            )
        )
    layered = [m for m in metrics if ((df.metric == m) & (df.layer != "") & (df.layer != "@output")).any()]
    if layered:
        n = len(layered)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
        for ax, metric in zip(axes[0], layered):
            for cand in dict.fromkeys(df.candidate):
                sub = df[(df.candidate == cand) & (df.metric == metric)]
                if len(sub) == 0:
                    continue
                depth = [i / max(1, len(sub) - 1) for i in range(len(sub))]
                ax.plot(depth, sub.score.astype(float), marker="o", label=cand)
            ax.set_xlabel("relative layer depth")
            ax.set_title(metric)
        axes[0][0].legend(fontsize=7)
        out.append(("score against layer depth (0 = first listed layer, 1 = penultimate)", _png(fig)))
    return out


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:0.9em;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td.l,th.l{text-align:left}tr.pick{background:#eef6ee}.warn{color:#8a5a00;font-size:0.85em}
img{max-width:100%}.why{font-size:1.05em}"""


def render_html(ranking: Ranking, title: str | None = None) -> str:
    """``report.html``: one self-contained page (inline CSS, base64 PNG plots, no scripts)."""
    t = ranking.target
    pick = ranking.pick
    title = title or f"tguide ranking on {t.get('name', '?')}"
    table = summary_table(ranking)
    cols = list(table.columns)
    cands = ranking.candidates
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Target: {html.escape(str(t.get('name', '?')))} — {t.get('samples', '?')} samples, "
        f"{t.get('classes', '?')} classes. Metrics: {html.escape(', '.join(ranking.metrics))}"
        + (f"; null: {ranking.null} label shuffles" if ranking.null else "")
        + ".</p>",
    ]
    if pick:
        parts.append(
            f'<p class="why" id="pick"><b>Pick: {html.escape(pick.candidate)}</b>'
            + (f", layer <code>{html.escape(pick.layer)}</code>" if pick.layer else "")
            + f" — {html.escape(pick.reason)}.</p>"
        )
    else:
        parts.append('<p class="why" id="pick"><b>No pick</b>: the first metric has no finite score.</p>')
    sentences = baseline_sentences(ranking)
    if sentences:
        parts.append(
            '<h2>Baselines</h2><ul id="baselines">' + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>"
        )
    parts.append(
        '<h2>Candidates</h2><table id="candidates"><thead><tr>'
        + "".join(
            f'<th class="l">{html.escape(c)}</th>'
            if c in ("candidate", "best layer", "warnings")
            else f"<th>{html.escape(c)}</th>"
            for c in cols
        )
        + '<th class="l">provenance</th><th>params</th></tr></thead><tbody>'
    )
    for _, r in table.iterrows():
        info = cands.get(r.candidate, {})
        cls = "candidate-row pick" if pick and r.candidate == pick.candidate else "candidate-row"
        cells = []
        for c in cols:
            if c == "warnings":
                cells.append(f'<td class="l warn">{html.escape(str(r[c]))}</td>')
            elif c in ("candidate", "best layer"):
                cells.append(f'<td class="l">{html.escape(str(r[c]))}</td>')
            else:
                cells.append(f"<td>{_fmt(r[c])}</td>")
        parts.append(
            f'<tr class="{cls}">'
            + "".join(cells)
            + f'<td class="l">{html.escape(str(info.get("provenance", "")))}</td>'
            + f"<td>{info.get('num_params', '')}</td></tr>"
        )
    parts.append("</tbody></table>")
    for caption, png in _plots(ranking):
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    timing = ranking.candidate_timings()
    if timing:
        parts.append(
            '<h2>Cost</h2><table id="timing"><tr><th class="l">candidate</th><th>extract s</th>'
            "<th>score s</th></tr>"
            + "".join(
                f'<tr><td class="l">{html.escape(k)}</td><td>{v["extract_s"]:.2f}</td><td>{v["score_s"]:.2f}</td></tr>'
                for k, v in timing.items()
            )
            + "</table>"
        )
    parts.append("<p>Full long-format table: <code>ranking.csv</code>.</p></body></html>")
    return "\n".join(parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary sibling first, then ``os.replace`` them all."""
    tmps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
            tmps.append((tmp, path))
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            Path(tmp).unlink(missing_ok=True)


def ranking_csv(ranking: Ranking) -> bytes:
    """``ranking.csv``: the long table as it is (columns :data:`~tguide.select.ranking_result.COLUMNS`), no index."""
    return ranking.table.to_csv(index=False).encode()


def write_reports(
    ranking: Ranking, out_dir: str | os.PathLike[str], *, wandb_run: Any = None, title: str | None = None
) -> list[Path]:
    """Write ``ranking.csv``, ``ranking.md`` and ``report.html`` into ``out_dir`` (atomically)
    and, given a W&B run, log ``rank/table`` and ``rank/summary`` tables. Returns the paths."""
    out = Path(out_dir)
    df = ranking.table
    csv_bytes = ranking_csv(ranking)
    md = render_markdown(ranking).encode()
    page = render_html(ranking, title).encode()
    paths = [out / "ranking.csv", out / "ranking.md", out / "report.html"]
    write_atomic(list(zip(paths, (csv_bytes, md, page))))
    if wandb_run is not None:
        import wandb

        wandb_run.log(
            {"rank/table": wandb.Table(dataframe=df), "rank/summary": wandb.Table(dataframe=summary_table(ranking))}
        )
        if ranking.pick is not None:
            wandb_run.summary["rank/pick"] = f"{ranking.pick.candidate} {ranking.pick.layer}".strip()
    return paths
