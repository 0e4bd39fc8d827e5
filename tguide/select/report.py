"""Reports of a :class:`~tguide.select.ranking_result.Ranking`: ``ranking.csv``, ``ranking.md``, a
self-contained ``report.html`` (drawn by :mod:`tguide.select.report_html`), W&B tables.

``ranking.md`` is the short text version of the page: the pick, how sure, what the baselines would
pick, the saturation flags, the per-candidate table, the candidate × score ranks and, after a
``guided`` run, predicted versus realised (the numbers come from :mod:`tguide.select.report_data`).

All files are rendered in memory first and then written atomically (temporary file +
``os.replace``), so an error leaves no half-written report.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tguide.select.report_data import (
    baseline_sentences,
    cell_flags,
    confidence_sentence,
    finite,
    flag_sentences,
    fmt,
    guided_rows,
    rank_matrix,
    summary_table,
)
from tguide.select.report_html import render_html

if TYPE_CHECKING:  # the Ranking calls this module; this module only reads its fields
    from tguide.select.ranking_result import Ranking

__all__ = ["ranking_csv", "render_markdown", "write_atomic", "write_report"]


def _md_table(cols: Sequence[str], rows: Sequence[Sequence[str]], text: Sequence[str] = ("candidate",)) -> list[str]:
    """A Markdown table: the ``text`` columns left-aligned, the others (numbers) right-aligned."""
    align = "|".join("---" if c in text else "---:" for c in cols)
    lines = ["| " + " | ".join(cols) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return lines


def render_markdown(ranking: Ranking, *, guided: Any = None) -> str:
    """``ranking.md``: target, pick and why, how sure, the baselines, the flags, the per-candidate
    table, the candidate × score ranks and, given ``guided``, predicted versus realised."""
    t = ranking.target
    pick = ranking.pick
    lines = [
        f"# Ranking on {t.get('name', '?')} ({t.get('samples', '?')} samples, {t.get('classes', '?')} classes)",
        "",
    ]
    if pick:
        where = f", layer `{pick.layer}`" if pick.layer else ""
        lines += [f"**Pick: {pick.candidate}**{where} — {pick.reason}.", ""]
    else:
        lines += ["**No pick**: the first metric has no usable score.", ""]
    lines += [f"Confidence: {confidence_sentence(ranking)}", ""]
    sentences = baseline_sentences(ranking)
    if sentences:
        lines += ["Baselines:", ""] + [f"- {s}" for s in sentences] + [""]
    flags = flag_sentences(ranking)
    if flags:
        lines += ["Flags:", ""] + [f"- {s}" for s in flags] + [""]
    table = summary_table(ranking)
    text = ("candidate", "best layer", "flags", "warnings")
    cols = [c for c in table.columns if c != "warnings"]
    digits = {"p_best": 2}
    body = [[str(r[c]) if c in text else fmt(r[c], digits.get(c, 4)) for c in cols] for _, r in table.iterrows()]
    lines += _md_table(cols, body, text)
    warned = [(r["candidate"], r["warnings"]) for _, r in table.iterrows() if r["warnings"]]
    if warned:
        lines += ["", "Warnings:", ""] + [f"- {c}: {w}" for c, w in warned]
    ranks = rank_matrix(ranking).reindex(list(table.candidate))
    lines += ["", "Rank of each candidate by each score (1 = best; a flag or – where no usable score):", ""]
    flagged = cell_flags(ranking)
    body = [[str(c)] + [flagged.get((c, m), "–") if not finite(v) else fmt(v) for m, v in ranks.loc[c].items()]
            for c in ranks.index]  # fmt: skip
    lines += _md_table(["candidate", *ranks.columns], body)
    rows = guided_rows(guided)
    if rows:
        lines += ["", "Fine-tuned (predicted vs realised):", ""]
        cols = ["candidate", "role", "layer", "metric", "predicted", "P(best)", "test acc"]
        body = [
            [str(r["candidate"]), str(r["role"]), str(r["layer"]), str(r["metric"]), fmt(r["predicted_score"]),
             fmt(r["p_best"], 2), f"{fmt(r['test_acc'])} ± {fmt(r['test_acc_std'], 2)}"]
            for r in sorted(rows, key=lambda r: -float(r["test_acc"]) if finite(r["test_acc"]) else math.inf)
        ]  # fmt: skip
        lines += _md_table(cols, body, cols[:4])
    lines += ["", "Long format: `ranking.csv` (candidate, layer, metric, kind, score, z, ...).", ""]
    return "\n".join(lines)


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


def write_report(
    ranking: Ranking,
    out_dir: str | os.PathLike[str],
    *,
    guided: Any = None,
    wandb_run: Any = None,
    title: str | None = None,
) -> list[Path]:
    """Write ``ranking.csv``, ``ranking.md`` and ``report.html`` into ``out_dir`` (atomically) and,
    given a W&B run, log ``rank/table`` and ``rank/summary`` tables. ``guided`` (a ``GuidedResult`` or
    its rows) adds the predicted-versus-realised view. Returns the paths."""
    out = Path(out_dir)
    df = ranking.table
    guided_rows(guided)  # a clear error before anything is rendered
    csv_bytes = ranking_csv(ranking)
    md = render_markdown(ranking, guided=guided).encode()
    page = render_html(ranking, title, guided=guided).encode()
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
