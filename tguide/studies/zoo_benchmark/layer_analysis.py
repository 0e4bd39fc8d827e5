"""Which layer? The tables of the per-layer ground truth (:mod:`tguide.studies.zoo_benchmark.layers`).

For a cell (target, candidate) the *best layer* is the "auto" layer with the highest linear-probe
test accuracy; the *penultimate* layer is the last auto layer (the one the benchmark's ground
truth uses). A layer rule "score every auto layer with S and keep the best-scored one" is judged by

- **hit rate**: the fraction of cells where S's layer is a best layer (ties in probe accuracy count);
- **layer regret**: probe accuracy of the best layer − of S's layer, mean over cells;
- **global regret**: per target, S's best (candidate, layer) over the whole pool vs the best
  (candidate, layer) on offer (probe accuracy), mean over targets;

each with a 95% percentile bootstrap interval (cells resampled for the first two, targets for the
third; :func:`tguide.studies.zoo_benchmark.evaluation.bootstrap_ci`). The rule ``penultimate``
(no scoring) is the reference; ``pca64_S`` (the score on 64 principal components) is the
width-fair variant of ``S``, compared with it by the paired difference of layer regret.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tguide.features import OUTPUT
from tguide.studies.zoo_benchmark.evaluation import bootstrap_ci

__all__ = [
    "PENULTIMATE",
    "RESULTS",
    "cells",
    "global_regret",
    "layer_choice",
    "markdown",
    "read_csv",
    "summary",
    "write_csv",
    "write_report",
]

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
PENULTIMATE = "penultimate"
Cell = list[dict[str, Any]]  # one (target, candidate): its layer rows in auto-layer order


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Cell]:
    """``{(target, candidate): layer rows}`` (``@output`` rows dropped, row order = auto-layer order)."""
    out: dict[tuple[str, str], Cell] = defaultdict(list)
    for r in rows:
        if r["layer"] != OUTPUT and math.isfinite(_num(r.get("probe_test_acc"))):
            out[(r["target"], r["candidate"])].append(dict(r))
    return dict(out)


def layer_choice(cell: Cell, rule: str) -> dict[str, Any] | None:
    """The row the rule keeps: the last (penultimate) layer, or the best-scored by ``rule`` (first on ties)."""
    if rule == PENULTIMATE:
        return cell[-1]
    scored = [r for r in cell if math.isfinite(_num(r.get(rule)))]
    return max(scored, key=lambda r: _num(r[rule])) if scored else None


def global_regret(pool: Sequence[Mapping[str, Any]], rule: str) -> float:
    """Best probe accuracy among ``pool``'s rows − that of the row ``rule`` scores best (nan if none)."""
    scored = [r for r in pool if math.isfinite(_num(r.get(rule)))]
    if not scored:
        return float("nan")
    top = max(scored, key=lambda r: _num(r[rule]))
    return max(_num(r["probe_test_acc"]) for r in pool) - _num(top["probe_test_acc"])


def _pen_gap(cs: Mapping[tuple[str, str], Cell], keys: Sequence[tuple[str, str]], t: str) -> float:
    """Best probe accuracy over every layer of target ``t`` − best over its penultimate layers."""
    every = max(_num(r["probe_test_acc"]) for k in keys if k[0] == t for r in cs[k])
    return every - max(_num(cs[k][-1]["probe_test_acc"]) for k in keys if k[0] == t)


def summary(rows: Sequence[Mapping[str, Any]], rules: Sequence[str]) -> dict[str, Any]:
    """Per rule: hit rate, layer regret and global regret with bootstrap intervals; per cell the best
    layer vs the penultimate; and the width-fair comparison ``pca64_S`` − ``S``."""
    cs = cells(rows)
    keys = sorted(cs)
    best = {k: max(_num(r["probe_test_acc"]) for r in cs[k]) for k in keys}
    res: dict[str, Any] = {"cells": {}, "rules": {}, "width_fair": {}}
    for k in keys:
        top = max(cs[k], key=lambda r: _num(r["probe_test_acc"]))
        res["cells"][k] = {
            "best_layer": top["layer"],
            "best_acc": best[k],
            "penultimate": cs[k][-1]["layer"],
            "penultimate_acc": _num(cs[k][-1]["probe_test_acc"]),
            "n_layers": len(cs[k]),
        }
    regrets: dict[str, list[float]] = {}
    for rule in rules:
        reg, hit = [], []
        for k in keys:
            ch = layer_choice(cs[k], rule)
            r = best[k] - _num(ch["probe_test_acc"]) if ch is not None else float("nan")
            reg.append(r)
            hit.append(float(r <= 1e-12) if math.isfinite(r) else float("nan"))
        regrets[rule] = reg
        by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for k in keys:
            chosen = layer_choice(cs[k], rule) if rule == PENULTIMATE else None
            by_target[k[0]] += [chosen] if chosen is not None else cs[k]
        glob = {}
        for t, pool in by_target.items():
            if rule == PENULTIMATE:  # penultimate layers only, candidate by the probe itself: the layer's cost
                glob[t] = max(_num(r["probe_test_acc"]) for k in keys if k[0] == t for r in cs[k]) - max(
                    _num(r["probe_test_acc"]) for r in pool
                )
            else:
                glob[t] = global_regret(pool, rule)
        pen = {t: global_regret([cs[k][-1] for k in keys if k[0] == t], rule) for t in by_target}
        res["rules"][rule] = {
            "global_regret_penultimate_only": bootstrap_ci([v + _pen_gap(cs, keys, t) for t, v in pen.items()])
            if rule != PENULTIMATE
            else bootstrap_ci(list(glob.values())),
            "n_cells": int(sum(math.isfinite(v) for v in reg)),
            "hit_rate": bootstrap_ci(hit),
            "layer_regret": bootstrap_ci(reg),
            "global_regret": bootstrap_ci(list(glob.values())),
            "global_regret_per_target": glob,
        }
    for rule in rules:
        raw = rule.removeprefix("pca64_")
        if rule.startswith("pca64_") and raw in regrets:
            diff = [a - b for a, b in zip(regrets[rule], regrets[raw]) if math.isfinite(a - b)]
            res["width_fair"][raw] = {"regret_pca64_minus_raw": bootstrap_ci(diff)}
    return res


def _ci(v: Sequence[float]) -> str:
    m, lo, hi = v
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(rows: Sequence[Mapping[str, Any]], rules: Sequence[str]) -> str:
    """The tables of ``bench/results/zoo_layers.md``."""
    res = summary(rows, rules)
    per_cand: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (t, c), v in res["cells"].items():
        per_cand[c].append({"target": t, **v})
    n_cells = len(res["cells"])
    n_not = sum(v["best_layer"] != v["penultimate"] for v in res["cells"].values())
    gains = [v["best_acc"] - v["penultimate_acc"] for v in res["cells"].values()]
    lines = [
        f"{len(res['cells'])} (target, candidate) cells; the best layer by linear probe is not the penultimate "
        f"in {n_not} of {n_cells}; gain of the best layer over the penultimate: mean {np.mean(gains):.3f}, "
        f"max {max(gains):.3f}.",
        "",
        "### Best layer vs penultimate, per candidate",
        "",
        "| candidate | cells | best ≠ penultimate | mean gain "
        "| largest gain (target: best layer, acc vs penultimate) |",
        "|---|---|---|---|---|",
    ]
    for c, vs in sorted(per_cand.items()):
        g = [v["best_acc"] - v["penultimate_acc"] for v in vs]
        top = max(vs, key=lambda v: v["best_acc"] - v["penultimate_acc"])
        lines.append(
            f"| {c} | {len(vs)} | {sum(v['best_layer'] != v['penultimate'] for v in vs)} | {np.mean(g):+.3f} | "
            f"{top['target']}: {top['best_layer']} {top['best_acc']:.3f} vs {top['penultimate']} "
            f"{top['penultimate_acc']:.3f} |"
        )
    lines += [
        "",
        "### Layer rules: hit rate, layer regret, global regret (mean [95% bootstrap CI])",
        "",
        "| rule | cells | picks the best layer | layer regret | global (candidate, layer) regret "
        "| global regret, penultimate layers only |",
        "|---|---|---|---|---|---|",
    ]
    order = sorted(res["rules"], key=lambda r: res["rules"][r]["layer_regret"][0])
    for rule in order:
        v = res["rules"][rule]
        lines.append(
            f"| {rule} | {v['n_cells']} | {_ci(v['hit_rate'])} | {_ci(v['layer_regret'])} | "
            f"{_ci(v['global_regret'])} | {_ci(v['global_regret_penultimate_only'])} |"
        )
    lines += [
        "",
        "Both global regrets are measured against the best (candidate, layer) over every layer. The last "
        "column scores only the penultimate layers (the candidate choice of a penultimate-only rule); "
        "for `penultimate` itself both columns are the oracle's (the best candidate at its penultimate "
        "layer, by the probe): what the restriction costs at best.",
        "",
        "### Width-fair variant: layer regret of pca64_S − of S (paired over cells; < 0: the projection helps)",
        "",
        "| score | difference [95% CI] |",
        "|---|---|",
    ]
    for s, v in res["width_fair"].items():
        m, lo, hi = v["regret_pca64_minus_raw"]
        lines.append(f"| {s} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """All rows in one CSV (the union of their keys as columns; ``zoo`` and ids first)."""
    first = ["zoo", "target", "candidate", "layer", "dim", "n_train"]
    cols = first + sorted({k for r in rows for k in r} - set(first))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in cols})


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of :func:`write_csv` (numbers as floats, empty cells dropped)."""
    out = []
    with path.open() as fh:
        for r in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    continue
                row[k] = v if k in ("zoo", "target", "candidate", "layer") or k.endswith("_error") else _num(v)
            out.append(row)
    return out


def rules_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``penultimate`` and every score column present in the rows."""
    from tguide.studies.zoo_benchmark.layers import PCA_DIM, PCA_SCORES, SCORES

    have = {k for r in rows for k in r}
    return [PENULTIMATE] + [s for s in (*SCORES, *(f"pca{PCA_DIM}_{s}" for s in PCA_SCORES)) if s in have]


def write_report(rows: Sequence[Mapping[str, Any]], out: Path, name: str = "zoo_layers") -> str:
    """``<out>/<name>.csv`` (the rows) and ``<out>/<name>.md`` (the tables, all rows and per zoo)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"{name}.csv")
    rules = rules_of(rows)
    text = "## All candidates\n\n" + markdown(rows, rules)
    zoos = sorted({str(r.get("zoo", "")) for r in rows} - {""})
    for z in zoos if len(zoos) > 1 else []:
        text += f"\n## Zoo: {z}\n\n" + markdown([r for r in rows if r.get("zoo") == z], rules)
    (out / f"{name}.md").write_text(text)
    return text
