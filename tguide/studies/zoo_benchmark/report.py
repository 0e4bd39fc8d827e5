"""Tables of the zoo benchmark: the ground-truth CSV/markdown and the score-quality markdown.

One style for both: markdown tables with the mean and its 95% interval (Student-t over seeds for
accuracies, :func:`tguide.stats.mean_ci`; percentile bootstrap over sub-pools for agreement
measures, :func:`tguide.studies.zoo_benchmark.evaluation.bootstrap_ci`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tguide.stats import mean_ci
from tguide.studies.zoo_benchmark.protocol import Member, Protocol

__all__ = ["BASELINES", "COLUMNS", "EXTRA", "choose_lr", "markdown", "protocol_text", "write_groundtruth_report"]

COLUMNS = [
    "target",
    "candidate",
    "linear_probe_acc",
    "finetune_acc_mean",
    "finetune_acc_ci95",
    "finetune_lr",
    "seeds",
    "n_train",
    "n_test",
    "input_size",
    "epochs",
]
EXTRA = ["linear_probe_l2", "finetune_val_acc_by_lr", "probe_seconds", "finetune_seconds_mean"]
BASELINES = ("source_acc", "params", "knn", "linear_probe", "random")


def choose_lr(runs: list[dict], target: str, cand: str, lrs: tuple[float, ...], epochs: int, size: int) -> float | None:
    """The lr with the best seed-0 val accuracy (ties → smaller lr); None until all lrs have run."""
    val = {}
    for r in runs:
        if (
            r["kind"] == "finetune"
            and r["target"] == target
            and r["candidate"] == cand
            and r["seed"] == 0
            and r["epochs"] == epochs
            and r["input_size"] == size
            and r["lr"] in lrs
        ):
            val[r["lr"]] = r["val_acc"]
    if len(val) < len(lrs):
        return None
    return max(sorted(lrs), key=lambda lr: (val[lr], -lr))


def write_groundtruth_report(
    runs: list[dict],
    out: Path,
    targets: Sequence[str],
    candidates: Sequence[Member],
    protocol: Protocol,
    extra_note: str = "",
) -> Path:
    """`<out>/zoo_groundtruth.csv` and `.md` from the runs records (one row per target × candidate)."""
    rows = []
    for t in targets:
        for c in candidates:
            size = c.entry.input.size
            probe = [
                r
                for r in runs
                if r["kind"] == "probe" and r["target"] == t and r["candidate"] == c.name and r["input_size"] == size
            ]
            ft = list(
                {
                    (r["lr"], r["seed"]): r
                    for r in reversed(runs)
                    if r["kind"] == "finetune"
                    and r["target"] == t
                    and r["candidate"] == c.name
                    and r["input_size"] == size
                    and r["epochs"] == protocol.epochs
                }.values()
            )  # one record per (lr, seed): the first
            if not probe and not ft:
                continue
            lr = choose_lr(runs, t, c.name, protocol.lrs, protocol.epochs, size)
            chosen = sorted(
                (r for r in ft if lr is not None and r["lr"] == lr and r["seed"] in protocol.seeds),
                key=lambda r: r["seed"],
            )
            mean, ci = mean_ci([r["test_acc"] for r in chosen]) if chosen else (float("nan"), float("nan"))
            ref = probe[-1] if probe else ft[-1]
            rows.append(
                {
                    "target": t,
                    "candidate": c.name,
                    "linear_probe_acc": round(probe[-1]["test_acc"], 4) if probe else "",
                    "finetune_acc_mean": round(mean, 4) if chosen else "",
                    "finetune_acc_ci95": round(ci, 4) if len(chosen) > 1 else "",
                    "finetune_lr": lr if lr is not None else "",
                    "seeds": ";".join(str(r["seed"]) for r in chosen),
                    "n_train": ref["n_train"],
                    "n_test": ref["n_test"],
                    "input_size": size,
                    "epochs": protocol.epochs,
                    "linear_probe_l2": probe[-1]["l2"] if probe else "",
                    "finetune_val_acc_by_lr": ";".join(
                        f"{r['lr']:g}:{r['val_acc']:.4f}"
                        for r in sorted((r for r in ft if r["seed"] == 0), key=lambda r: r["lr"])
                    ),
                    "probe_seconds": round(probe[-1]["seconds"], 1) if probe else "",
                    "finetune_seconds_mean": round(sum(r["seconds"] for r in ft) / len(ft), 1) if ft else "",
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "zoo_groundtruth.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS + EXTRA)
        w.writeheader()
        w.writerows(rows)
    md = [
        "# Zoo ground truth (linear probe and fine-tuning accuracy)",
        "",
        "Protocol: `tguide.studies.zoo_benchmark` / `tguide.data.targets`, fixed before any transferability "
        f"score was computed. {protocol_text(protocol)}{extra_note}",
        "",
        "| target | candidate | linear probe | fine-tune (mean ± 95% CI) | lr | seeds | n_train | n_test | px | "
        "s / probe | s / fine-tune |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ft_cell = (
            f"{r['finetune_acc_mean']:.4f} ± {r['finetune_acc_ci95']:.4f}"
            if r["finetune_acc_ci95"] != ""
            else (f"{r['finetune_acc_mean']:.4f}" if r["finetune_acc_mean"] != "" else "")
        )
        lp = f"{r['linear_probe_acc']:.4f}" if r["linear_probe_acc"] != "" else ""
        md.append(
            f"| {r['target']} | {r['candidate']} | {lp} | {ft_cell} | {r['finetune_lr']} | {r['seeds']} | "
            f"{r['n_train']} | {r['n_test']} | {r['input_size']} | {r['probe_seconds']} | "
            f"{r['finetune_seconds_mean']} |"
        )
    (out / "zoo_groundtruth.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return csv_path


def protocol_text(p: Protocol) -> str:
    return (
        f"Fine-tuning: new linear head, whole network, SGD momentum {p.momentum}, weight decay "
        f"{p.weight_decay:g}, batch {p.batch_size}, per-step cosine to 0, {p.epochs} epochs, no augmentation, "
        f"backbone lr from {{{', '.join(f'{x:g}' for x in p.lrs)}}} (head {p.head_lr_mult:g}×) chosen on val at "
        f"seed 0, then seeds {', '.join(map(str, p.seeds))} at that lr; test accuracy mean ± Student-t 95% CI. "
        f"Linear probe: standardised penultimate features, multinomial logistic regression (L-BFGS), L2 from "
        f"{{{', '.join(f'{x:g}' for x in p.l2_grid)}}} chosen on val. ImageNet models at {p.imagenet_size} px."
    )


def _f(x: float, nd: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    lines = []
    for gt_name, block in res["gt"].items():
        summ = block["summary"]
        targets = res["targets"]
        lines += [
            f"### Ground truth: {gt_name.replace('_', ' ')} accuracy",
            "",
            "| score | " + " | ".join(targets) + " | mean τ_w | sub-pool τ_w (95% CI) | sub-pool rel. top acc "
            "| top-1 hit | − best baseline τ_w (95% CI) | stability |",
            "|---|" + "---|" * (len(targets) + 6),
        ]
        order = sorted(summ, key=lambda m: -summ[m]["mean_tau_w"])
        for m in order:
            s = summ[m]
            cells = [_f(s["per_target"].get(t, {}).get("weighted_tau", float("nan"))) for t in targets]
            sp = s["subpool_tau_w"]
            rel = s["subpool_rel_top_acc"]
            top1 = s["subpool_top1"]
            diffs = {b: v for b, v in s["minus_baseline"].items() if b in ("source_acc", "knn", "linear_probe")}
            if diffs and m not in BASELINES:
                worst = min(diffs.items(), key=lambda kv: kv[1][0])
                dtxt = f"{_f(worst[1][0])} [{_f(worst[1][1])}, {_f(worst[1][2])}] vs {worst[0]}"
            else:
                dtxt = "(baseline)" if m in BASELINES else "—"
            stab = res["stability"].get(m, float("nan"))
            tag = f"**{m}**" if m in BASELINES else m
            lines.append(
                f"| {tag} | " + " | ".join(cells) + f" | {_f(s['mean_tau_w'])} | {_f(sp[0])} [{_f(sp[1])}, "
                f"{_f(sp[2])}] | {rel[0]:.3f} | {top1[0]:.2f} | {dtxt} | {_f(stab)} |"
            )
        lo = block["loto"]
        lines += [
            "",
            "Leave-one-target-out choice (chosen on the other targets by mean τ_w): "
            + ", ".join(f"{t}: {v['chosen']} (τ_w {_f(v['tau_w'])})" for t, v in lo.items())
            + f"; mean τ_w {_f(block['loto_mean_tau_w'])}.",
            "",
        ]
    sec = res["seconds"]
    lines += ["### Cost (median seconds per target × candidate, 1 CPU thread)", "", "| step | seconds |", "|---|---|"]
    for m, v in sorted(sec.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {m} | {v:.3f} |")
    lines.append(f"| one fine-tuning run (ground truth) | {res['finetune_seconds_median']:.1f} |")
    return "\n".join(lines) + "\n"
