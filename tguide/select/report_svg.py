"""Inline SVG charts for ``report.html``: the per-layer line chart (with an interval band) and the
small horizontal bars of the predicted-versus-realised view.

Pure string building (no plotting library, no network): each function returns one ``<svg>`` element
whose ``viewBox`` scales with the page, so a chart stays sharp and never widens the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Series", "color", "hbar", "layer_chart", "nice_ticks"]

# 20 colours that stay apart on white (Okabe-Ito, then Tableau's), cycled with dashes past 20.
_COLORS = (
    "#0072b2 #e69f00 #009e73 #d55e00 #cc79a7 #56b4e9 #8c6d31 #000000 #f0e442 #7f7f7f "
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #bcbd22 #17becf #393b79"
).split()


def color(i: int) -> tuple[str, str]:
    """The colour and SVG dash pattern of the ``i``-th candidate (``""`` = solid)."""
    dash = ("", "6 3", "2 2")[(i // len(_COLORS)) % 3]
    return _COLORS[i % len(_COLORS)], dash


@dataclass
class Series:
    """One candidate's line: ``x`` in [0, 1] (relative layer depth), ``y`` scores, optional interval
    ``lo``/``hi`` (same length, NaN where absent), ``flagged`` points drawn hollow, ``labels`` per point."""

    name: str
    index: int
    x: list[float]
    y: list[float]
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    emphasis: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 3 * n:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def _tick_label(v: float) -> str:
    return f"{v:.4g}"


def layer_chart(series: Sequence[Series], *, title: str, ylabel: str, width: int = 600, height: int = 330) -> str:
    """One chart: score (y) against relative layer depth (x), a line per candidate, its interval as
    a translucent band, hollow markers on flagged rows; a ``<title>`` on each point names it."""
    left, right, top, bottom = 64, 14, 30, 44
    pw, ph = width - left - right, height - top - bottom
    ys = [v for s in series for v in (*s.y, *s.lo, *s.hi) if math.isfinite(v)]
    ticks = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]
    y0, y1 = ticks[0], ticks[-1]

    def sx(x: float) -> float:
        return left + pw * x

    def sy(y: float) -> float:
        return top + ph * (1 - (y - y0) / ((y1 - y0) or 1.0))

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" class="ct">{html.escape(title)}</text>',
    ]
    for t in ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_tick_label(t)}</text>')
    for t, lab in ((0.0, "first"), (0.5, "middle"), (1.0, "last")):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{lab}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" class="tick" text-anchor="middle">relative layer depth</text>'
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" class="tick" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>"
    )
    for s in series:
        col, dash = color(s.index)
        cls = "line em" if s.emphasis else "line"
        g = [f'<g class="cand" data-cand="{html.escape(s.name)}">']
        band = [(x, lo, hi) for x, lo, hi in zip(s.x, s.lo, s.hi) if math.isfinite(lo) and math.isfinite(hi)]
        if len(band) >= 2:
            pts = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band] + [
                f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band)
            ]
            g.append(f'<polygon points="{" ".join(pts)}" fill="{col}" class="band"/>')
        elif len(band) == 1:
            x, lo, hi = band[0]
            g.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" stroke="{col}"/>')
        line = [(x, y) for x, y in zip(s.x, s.y) if math.isfinite(y)]
        if len(line) >= 2:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            g.append(f'<polyline points="{d}" stroke="{col}" class="{cls}"{dash_attr}/>')
        for i, (x, y) in enumerate(zip(s.x, s.y)):
            if not math.isfinite(y):
                continue
            hollow = i < len(s.flagged) and s.flagged[i]
            fill = "#fff" if hollow else col
            label = s.labels[i] if i < len(s.labels) else ""
            g.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{4.5 if s.emphasis else 3.5}" fill="{fill}" '
                f'stroke="{col}" stroke-width="1.5"><title>{html.escape(s.name)} {html.escape(label)}: '
                f"{y:.4g}{' (flagged)' if hollow else ''}</title></circle>"
            )
        g.append("</g>")
        out += g
    out.append("</svg>")
    return "".join(out)


def hbar(value: float, err: float, lo: float, hi: float, *, col: str = "#0072b2", width: int = 220) -> str:
    """A dot for ``value`` on a track spanning the axis [lo, hi], with a ± ``err`` whisker (NaN: track only)."""
    h = 16
    track = f'<line x1="0" x2="{width}" y1="{h / 2}" y2="{h / 2}" class="track"/>'
    out = [f'<svg class="hbar" viewBox="0 0 {width} {h}">{track}']
    if math.isfinite(value) and hi > lo:

        def sx(v: float) -> float:
            return 6 + max(0.0, min(width - 12, (width - 12) * (v - lo) / (hi - lo)))

        if math.isfinite(err) and err > 0:
            a, b = sx(value - err), sx(value + err)
            out.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{h / 2}" y2="{h / 2}" stroke="{col}" stroke-width="3"/>')
        out.append(f'<circle cx="{sx(value):.1f}" cy="{h / 2}" r="5" fill="{col}"/>')
    out.append("</svg>")
    return "".join(out)
