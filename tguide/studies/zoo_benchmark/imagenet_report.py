"""Ground-truth table of the ImageNet-only benchmark: ``imagenet_groundtruth.csv`` and ``.md``.

One row per (target, member): the linear probe (primary truth) and the fine-tune at the budget
chosen on validation (:data:`tguide.studies.zoo_benchmark.imagenet_run.BUDGET_RULE`), seed 0, lr
chosen on val. A fine-tune cell is **usable** when its test accuracy is at least the probe's
− 0.15 (the pre-registration's rule); an under-trained cell is listed with ``usable = no`` and never
enters the secondary truth; a cell not run at the chosen budget (the CPU ran out) says
``not run``. The mixed benchmark's 4-epoch fine-tunes of the reused nets are listed beside it
(``finetune4_acc``, mean of 3 seeds), not used.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "GAP", "read_truth", "write_groundtruth"]

GAP = 0.15
COLUMNS = [
    "target",
    "candidate",
    "linear_probe_acc",
    "linear_probe_val_acc",
    "probe_from",
    "finetune_epochs",
    "finetune_lr",
    "finetune_acc",
    "finetune_val_by_lr",
    "finetune_minus_probe",
    "usable",
    "finetune4_acc",
    "feature_dim",
    "n_train",
    "n_test",
]


def _chosen(cell: list[dict]) -> dict | None:
    """The seed-0 run with the best val accuracy (ties → the smaller lr), when every lr of the grid ran."""
    seed0 = [r for r in cell if r.get("seed") == 0]
    if len({r["lr"] for r in seed0}) < 2:
        return None
    return max(sorted(seed0, key=lambda r: r["lr"]), key=lambda r: (r["val_acc"], -r["lr"]))


def write_groundtruth(
    runs: list[dict],
    out: Path,
    targets: Sequence[str],
    members: Sequence[Any],
    budgets: Sequence[int],
    budget_targets: Sequence[str],
    budget_models: Sequence[str],
) -> Path:
    """Write the CSV and markdown; returns the CSV path."""
    from tguide.studies.zoo_benchmark.imagenet_run import choose_budget

    epochs = choose_budget(runs, tuple(budgets), tuple(budget_targets), tuple(budget_models))
    rows = []
    for t in targets:
        for m in members:
            probe = [r for r in runs if r["kind"] == "probe" and r["target"] == t and r["candidate"] == m.name]
            if not probe:
                continue
            p = probe[-1]
            cell = [
                r
                for r in runs
                if r["kind"] == "finetune"
                and r["target"] == t
                and r["candidate"] == m.name
                and r["epochs"] == epochs
                and not r.get("reused_from")
            ]
            old = [
                r["test_acc"]
                for r in runs
                if r["kind"] == "finetune"
                and r["target"] == t
                and r["candidate"] == m.name
                and r.get("reused_from")
                and r["epochs"] == 4
            ]
            best = _chosen(cell)
            gap = best["test_acc"] - p["test_acc"] if best else None
            rows.append(
                {
                    "target": t,
                    "candidate": m.name,
                    "linear_probe_acc": round(p["test_acc"], 4),
                    "linear_probe_val_acc": round(p["val_acc"], 4),
                    "probe_from": "mixed benchmark" if p.get("reused_from") else "computed",
                    "finetune_epochs": epochs,
                    "finetune_lr": best["lr"] if best else "",
                    "finetune_acc": round(best["test_acc"], 4) if best else "",
                    "finetune_val_by_lr": ";".join(f"{r['lr']:g}:{r['val_acc']:.4f}" for r in cell if r["seed"] == 0),
                    "finetune_minus_probe": round(gap, 4) if gap is not None else "",
                    "usable": "not run" if gap is None else ("yes" if gap >= -GAP else "no"),
                    "finetune4_acc": round(sum(old) / len(old), 4) if old else "",
                    "feature_dim": p.get("feature_dim", ""),
                    "n_train": p["n_train"],
                    "n_test": p["n_test"],
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "imagenet_groundtruth.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    budget_rows = sorted(
        (r for r in runs if r["kind"] == "budget"), key=lambda r: (r["target"], r["candidate"], r["epochs"], r["lr"])
    )
    md = [
        "# ImageNet-only pool: ground truth",
        "",
        f"Fine-tune budget chosen on validation: **{epochs} epochs** (rule: smallest of {list(budgets)} whose seed-0 "
        f"val accuracy is within {GAP} of the val linear probe for {', '.join(budget_models)} on "
        f"{', '.join(budget_targets)}). Seed 0 only; lr from the grid chosen on val. `usable`: fine-tune ≥ probe − "
        f"{GAP} on test (the pre-registration's rule).",
        "",
        "Budget runs (val / test accuracy):",
        "",
        "| target | model | epochs | lr | val | test | s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    md += [
        f"| {r['target']} | {r['candidate']} | {r['epochs']} | {r['lr']:g} | {r['val_acc']:.3f} | {r['test_acc']:.3f} "
        f"| {r['seconds']:.0f} |"
        for r in budget_rows
    ]
    md += [
        "",
        "| target | candidate | D | probe | probe from | fine-tune | − probe | usable | 4-epoch (mixed run) |",
        "|---|---|---:|---:|---|---:|---:|---|---:|",
    ]
    md += [
        f"| {r['target']} | {r['candidate']} | {r['feature_dim']} | {r['linear_probe_acc']:.3f} | {r['probe_from']} | "
        f"{r['finetune_acc']} | {r['finetune_minus_probe']} | {r['usable']} | {r['finetune4_acc']} |"
        for r in rows
    ]
    (out / "imagenet_groundtruth.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def read_truth(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{"linear_probe"|"finetune": {target: {candidate: acc}}}``; only usable fine-tune cells."""
    truth: dict[str, dict[str, dict[str, float]]] = {"linear_probe": {}, "finetune": {}}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            truth["linear_probe"].setdefault(r["target"], {})[r["candidate"]] = float(r["linear_probe_acc"])
            if r["usable"] == "yes":
                truth["finetune"].setdefault(r["target"], {})[r["candidate"]] = float(r["finetune_acc"])
    return truth
