"""The default selector of ``rank`` and ``guided``, chosen by the pre-registered rule on the mixed zoo.

The rule (``docs/preregistration.md``, section 1, committed before it was applied): among
:data:`SELECTORS` — ``knn`` (leave-one-out kNN accuracy), ``logme`` (You et al., ICML 2021) and
``logme+knn`` (each z-scored across the target's candidate pool, then averaged with equal weights,
:func:`~tguide.studies.zoo_benchmark.evaluation.zscore_mean`) — the default is the one with the
highest mean weighted Kendall τ_w over the mixed zoo's targets under the **primary** ground truth
(linear-probe accuracy); selectors within :data:`TIE` of the best count as tied, and a tie goes to
the simplest (the order of :data:`SELECTORS`).

Its honest figure is leave-one-target-out (:func:`leave_one_target_out_figure`): for each target,
the rule applied to the other targets chooses a selector; that selector's τ_w and regret
(best ground truth − ground truth of the top-scored candidate) on the held-out target are reported,
with the mean over held-out targets and its bootstrap interval. The **secondary** ground truth is
the fine-tuned accuracy, restricted to cells whose fine-tune is not under-trained
(fine-tune ≥ linear probe − :data:`UNDERTRAINED_GAP`).

    python -m tguide.studies.zoo_benchmark default-selector      # bench/results/zoo_default_selector.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tguide.studies.zoo_benchmark.evaluation import agreement, bootstrap_ci, subpools
from tguide.studies.zoo_benchmark.scoring import combo_score, read_scores

__all__ = [
    "SELECTORS",
    "TIE",
    "UNDERTRAINED_GAP",
    "choose",
    "evaluate",
    "leave_one_target_out_figure",
    "main",
    "markdown",
    "read_truth",
    "regret",
]

SELECTORS = ("knn", "logme", "logme+knn")  # simplest first: the tie-break order of the rule
TIE = 0.01
UNDERTRAINED_GAP = 0.15
RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"

Truth = dict[str, dict[str, float]]  # target -> candidate -> accuracy


def read_truth(path: Path, kind: str) -> tuple[Truth, list[tuple[str, str]]]:
    """``(truth, excluded)`` from ``zoo_groundtruth.csv``: ``kind`` is ``"linear_probe"`` (primary) or
    ``"finetune"`` (secondary; cells more than :data:`UNDERTRAINED_GAP` below their probe are excluded
    and listed as ``(target, candidate)``)."""
    if kind not in ("linear_probe", "finetune"):
        raise ValueError(f"kind must be 'linear_probe' or 'finetune', got {kind!r}")
    truth: Truth = defaultdict(dict)
    excluded: list[tuple[str, str]] = []
    with path.open() as fh:
        for r in csv.DictReader(fh):
            probe = float(r["linear_probe_acc"] or "nan")
            value = probe if kind == "linear_probe" else float(r["finetune_acc_mean"] or "nan")
            if not math.isfinite(value):
                continue
            if kind == "finetune" and not value >= probe - UNDERTRAINED_GAP:
                excluded.append((r["target"], r["candidate"]))
                continue
            truth[r["target"]][r["candidate"]] = value
    return dict(truth), excluded


def regret(scores: Mapping[str, float], truth: Mapping[str, float]) -> float:
    """``max(truth) − truth[argmax scores]`` over the candidates that have both (ties: first in name order)."""
    keys = sorted(k for k in scores if k in truth and math.isfinite(scores[k]))
    if not keys:
        return float("nan")
    top = max(keys, key=lambda k: scores[k])
    return float(max(truth[k] for k in keys) - truth[top])


def choose(mean_tau: Mapping[str, float], order: Sequence[str] = SELECTORS, tie: float = TIE) -> str:
    """The rule: the highest mean τ_w; within ``tie`` of it, the first of ``order`` (the simplest)."""
    finite = {k: v for k, v in mean_tau.items() if math.isfinite(v)}
    if not finite:
        raise ValueError("no selector has a finite mean τ_w")
    best = max(finite.values())
    return next(s for s in order if s in finite and finite[s] >= best - tie)


def _per_target(scores_full: Mapping[str, Any], truth: Truth, selector: str) -> dict[str, dict[str, float]]:
    out = {}
    for t, gt in truth.items():
        s = combo_score(selector, scores_full[t], sorted(gt))
        if len(s) >= 2:
            out[t] = {"tau_w": agreement(s, gt)["weighted_tau"], "regret": regret(s, gt)}
    return out


def leave_one_target_out_figure(per: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """``per[selector][target] = {"tau_w", "regret"}`` → for each held-out target the rule's choice on
    the others and its τ_w / regret there, with means and 95% bootstrap intervals over held-out targets."""
    targets = sorted(set.intersection(*(set(v) for v in per.values())))
    rows: dict[str, dict[str, Any]] = {}
    for held in targets:
        means = {s: float(np.mean([per[s][t]["tau_w"] for t in targets if t != held])) for s in per}
        c = choose(means, [s for s in SELECTORS if s in per])
        rows[held] = {"chosen": c, "tau_w": per[c][held]["tau_w"], "regret": per[c][held]["regret"]}
    return {
        "per_target": rows,
        "tau_w": bootstrap_ci([r["tau_w"] for r in rows.values()]),
        "regret": bootstrap_ci([r["regret"] for r in rows.values()]),
    }


def evaluate(scores_csv: Path, groundtruth_csv: Path, n_pools: int = 200) -> dict[str, Any]:
    """The rule applied to the shipped mixed-zoo files (``full`` setup), both ground truths."""
    table = read_scores(scores_csv)
    full = {t: v for (t, setup), v in table.items() if setup == "full"}
    out: dict[str, Any] = {"selectors": list(SELECTORS), "tie": TIE}
    for kind in ("linear_probe", "finetune"):
        truth, excluded = read_truth(groundtruth_csv, kind)
        truth = {t: gt for t, gt in truth.items() if t in full and len(gt) >= 4}
        per = {s: _per_target(full, truth, s) for s in SELECTORS}
        sub: dict[str, list[float]] = defaultdict(list)
        sub_regret: dict[str, list[float]] = defaultdict(list)
        for ti, t in enumerate(sorted(truth)):
            for pool in subpools(sorted(truth[t]), n_pools, 4, seed=ti):
                for s in SELECTORS:
                    sc = combo_score(s, full[t], pool)
                    if len(sc) >= 4:
                        sub[s].append(agreement(sc, truth[t], pool)["weighted_tau"])
                        sub_regret[s].append(regret(sc, {c: truth[t][c] for c in pool}))
        summary: dict[str, dict[str, Any]] = {
            s: {
                "mean_tau_w": float(np.mean([v["tau_w"] for v in per[s].values()])),
                "mean_regret": float(np.mean([v["regret"] for v in per[s].values()])),
                "per_target": per[s],
                "subpool_tau_w": bootstrap_ci(sub[s]),
                "subpool_regret": bootstrap_ci(sub_regret[s]),
            }
            for s in SELECTORS
        }
        out[kind] = {
            "excluded": excluded,
            "summary": summary,
            "choice": choose({s: float(summary[s]["mean_tau_w"]) for s in SELECTORS}),
            "loto": leave_one_target_out_figure(per),
        }
    # the held-out figure of the selector chosen under the primary truth, read with the secondary truth
    sec = out["finetune"]["summary"]
    out["loto_secondary_of_primary_choice"] = {
        t: {"chosen": r["chosen"], **sec[str(r["chosen"])]["per_target"].get(t, {})}
        for t, r in out["linear_probe"]["loto"]["per_target"].items()
    }
    return out


def _ci(v: Sequence[float], digits: int = 3) -> str:
    m, lo, hi = v
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown(res: Mapping[str, Any]) -> str:
    """The tables of the docs page (numbers only; the prose lives in ``docs/studies/default_selector.md``)."""
    lines = [f"Default selector by the pre-registered rule: **{res['linear_probe']['choice']}**.", ""]
    for kind, title in (("linear_probe", "primary: linear probe"), ("finetune", "secondary: fine-tune")):
        r = res[kind]
        lines += [
            f"### Ground truth {title}",
            "",
            "| selector | mean τ_w (5 targets) | mean regret | sub-pool τ_w [95% CI] | sub-pool regret [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for s, v in r["summary"].items():
            lines.append(
                f"| {s} | {v['mean_tau_w']:+.3f} | {v['mean_regret']:.3f} | {_ci(v['subpool_tau_w'])} | "
                f"{_ci(v['subpool_regret'])} |"
            )
        if kind == "linear_probe":
            lines += ["", "Leave-one-target-out (the rule chooses on the other targets):", ""]
            lines += ["| held-out target | chosen | τ_w | regret |", "|---|---|---|---|"]
            for t, v in r["loto"]["per_target"].items():
                lines.append(f"| {t} | {v['chosen']} | {v['tau_w']:+.3f} | {v['regret']:.3f} |")
            lines.append(f"| **mean [95% CI]** | | {_ci(r['loto']['tau_w'])} | {_ci(r['loto']['regret'])} |")
        if r["excluded"]:
            lines += ["", "Under-trained cells excluded: " + ", ".join(f"{t}/{c}" for t, c in r["excluded"]) + "."]
        lines.append("")
    lines += [
        "Leave-one-target-out, the choice made under the primary truth, read with the fine-tune truth:",
        "",
        "| held-out target | chosen | τ_w | regret |",
        "|---|---|---|---|",
    ]
    sec = res["loto_secondary_of_primary_choice"]
    for t, v in sec.items():
        lines.append(
            f"| {t} | {v['chosen']} | {v.get('tau_w', float('nan')):+.3f} | {v.get('regret', float('nan')):.3f} |"
        )
    taus = bootstrap_ci([v.get("tau_w", float("nan")) for v in sec.values()])
    regs = bootstrap_ci([v.get("regret", float("nan")) for v in sec.values()])
    lines.append(f"| **mean [95% CI]** | | {_ci(taus)} | {_ci(regs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tguide.studies.zoo_benchmark default-selector", description=__doc__)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder with zoo_scores.csv and zoo_groundtruth.csv")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --results)")
    p.add_argument("--pools", type=int, default=200)
    a = p.parse_args(argv)
    res = evaluate(a.results / "zoo_scores.csv", a.results / "zoo_groundtruth.csv", a.pools)
    out = a.out or a.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_default_selector.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / "zoo_default_selector.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
