"""Summaries of the few-shot regime grid (:mod:`tguide.studies.fewshot.regimes`): paired statistics,
per-cell means with CIs, and the leave-one-cell-out rules for when the OTCE pre-fine-tune pays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tguide.stats import mean_ci
from tguide.studies.fewshot.regime_grid import CSV_COLUMNS, MAIN_METHODS, cells


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired difference a − b: mean, 95% Student-t half-width, n, wins, losses."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, ci = mean_ci(d)
    return {"mean": mean, "ci": ci, "n": int(d.size), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def summarise_cells(rows: list[dict[str, Any]], hps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per cell (CSV_COLUMNS) from the test rows (``phase`` main / var)."""
    out = []
    for cell in cells():
        main = {r["episode"]: r for r in rows if r["cell"] == cell.id and r["phase"] == "main"}
        var = {r["episode"]: r for r in rows if r["cell"] == cell.id and r["phase"] == "var"}
        rec: dict[str, Any] = {
            "cell": cell.id,
            "source": cell.source,
            "target": cell.target,
            "shot": cell.shot,
            "n_test": len(main),
            "n_variant": len(var),
        }
        hp = hps.get(cell.pair, {})
        rec["step1_lr"], rec["step2_lr"] = hp.get("step1_lr", float("nan")), hp.get("step2_lr", float("nan"))
        for k in CSV_COLUMNS:
            rec.setdefault(k, float("nan"))
        if main:
            eps = sorted(main)
            for m in MAIN_METHODS:
                rec[m], rec[f"{m}_ci"] = mean_ci([main[e][m] for e in eps])
            p = paired_stats([main[e]["otce"] for e in eps], [main[e]["vanilla"] for e in eps])
            rec["gain_otce"], rec["gain_otce_ci"] = p["mean"], p["ci"]
            for k in ("w_d", "w_t", "h_joint"):
                rec[k] = float(np.mean([main[e][k] for e in eps]))
            rec["sec_per_episode"] = (
                float(np.mean([sum(v for kk, v in main[e]["result"].items() if kk.endswith("_s")) for e in eps]))
                if "result" in main[eps[0]]
                else float("nan")
            )
        ve = [e for e in sorted(var) if e in main]
        if ve:
            for m in ("otce_wd", "otce_last"):
                p = paired_stats([var[e][m] for e in ve], [main[e]["vanilla"] for e in ve])
                rec[f"gain_{m}"], rec[f"gain_{m}_ci"] = p["mean"], p["ci"]
            if "scratch" in var[ve[0]]:
                rec["scratch"], rec["scratch_ci"] = mean_ci([var[e]["scratch"] for e in ve])
        out.append(rec)
    return out


def loo_rule(cells_: list[dict[str, Any]], prop: str, gain: str = "gain_otce") -> dict[str, Any]:
    """Leave-one-cell-out threshold rule "switch step 1 on when prop < x" (or > x), fitted on the other cells.

    For each held-out cell, pick the direction and threshold (midpoints of the others' values) that
    maximise the summed gain of the switched-on cells among the others; predict on the held-out cell.
    Returns the held-out decisions and the realised mean gain of the rule vs always-off (0).
    """
    vals = [(c[prop], c[gain]) for c in cells_ if np.isfinite(c[prop]) and np.isfinite(c[gain])]
    held = []
    for i, (v, g) in enumerate(vals):
        others = [vals[j] for j in range(len(vals)) if j != i]
        xs = sorted(o[0] for o in others)
        cands = [xs[0] - 1] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [xs[-1] + 1]
        best: tuple[float, float | None, str | None] = (0.0, None, None)  # (summed gain, threshold, direction)
        for t in cands:
            for d in ("<", ">"):
                on = [o[1] for o in others if (o[0] < t if d == "<" else o[0] > t)]
                s = float(sum(on))
                if s > best[0]:
                    best = (s, t, d)
        _, threshold, direction = best
        switch = threshold is not None and (v < threshold if direction == "<" else v > threshold)
        held.append(
            {
                "value": v,
                "gain": g,
                "threshold": threshold,
                "direction": direction,
                "switch_on": bool(switch),
                "realised": g if switch else 0.0,
            }
        )
    return {
        "prop": prop,
        "held_out": held,
        "mean_realised": float(np.mean([h["realised"] for h in held])) if held else 0.0,
    }


def loo_pays_rule(cells_: list[dict[str, Any]], prop: str, gain: str = "gain_otce") -> dict[str, Any]:
    """Leave-one-cell-out classifier "the cell pays (gain CI entirely above 0) when prop < x (or > x)".

    Fitted on the other cells by the fewest misclassified cells (ties: the rule that switches on
    fewest cells, i.e. "never" when the others hold no paying cell); applied to the held-out one.
    """
    vals = [
        (c[prop], bool(c[gain] - c[f"{gain}_ci"] > 0))
        for c in cells_
        if np.isfinite(c[prop]) and np.isfinite(c[gain]) and np.isfinite(c[f"{gain}_ci"])
    ]
    held = []
    for i, (v, pays) in enumerate(vals):
        others = [vals[j] for j in range(len(vals)) if j != i]
        xs = sorted(o[0] for o in others)
        cands = [xs[0] - 1] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [xs[-1] + 1]
        best: tuple = (len(others) + 1, len(others) + 1, None, None)
        for t in cands:
            for d in ("<", ">"):
                on = [(o[0] < t if d == "<" else o[0] > t) for o in others]
                err = sum(a != o[1] for a, o in zip(on, others))
                key = (err, sum(on), t, d)
                if key[:2] < best[:2]:
                    best = key
        _, _, t, d = best
        pred = v < t if d == "<" else v > t
        held.append({"value": v, "pays": pays, "threshold": t, "direction": d, "predicted": bool(pred)})
    return {
        "prop": prop,
        "held_out": held,
        "correct": int(sum(h["pays"] == h["predicted"] for h in held)),
        "paying_caught": int(sum(h["pays"] and h["predicted"] for h in held)),
        "paying": int(sum(h["pays"] for h in held)),
        "false_on": int(sum(h["predicted"] and not h["pays"] for h in held)),
    }


# ----------------------------------------------------------------------------- runner
