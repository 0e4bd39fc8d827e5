"""Aggregation, tables and plots of the metric-quality benchmark (called by ``run.py``).

Ground truth of a (source, target) pair: the mean test accuracy over seeds (and Omniglot episodes)
after the fixed fine-tuning budget, with a 95% Student-t interval over seeds. A score's value for a
pair: its value on the penultimate layer (mean over episodes). Agreement per target:
:func:`tguide.select.correlation.summarise`. ``otce_fitted``: λ from
:func:`tguide.metrics.fit_otce_weights` on the pairs of the *other* targets (leave-one-target-out),
so no evaluation pair is used to fit its own score.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tguide.metrics import fit_otce_weights
from tguide.select.correlation import summarise
from tguide.stats import mean_ci
from tguide.studies.metric_quality.scores import PARTS

MEASURES = ("pearson", "spearman", "kendall", "weighted_tau", "top1", "regret")


def _mean(v: Sequence[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def ground_truth(records: list[dict[str, Any]], penultimate: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """``{target: {source: {"acc", "ci", "seconds", "per_layer": {layer: acc}}}}``."""
    by: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    secs: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    pen: dict[tuple[str, str], str] = {}
    for r in records:
        key = (r["target"], r["source"], r["layer"])
        by[key][r["seed"]].append(r["acc"])  # episodes of a seed are averaged first
        secs[key].append(r["seconds"])
        if r["penultimate"]:
            pen[(r["target"], r["source"])] = r["layer"]
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (target, source, layer), seeds in by.items():
        per_seed = [float(np.mean(v)) for v in seeds.values()]
        mean, half = mean_ci(per_seed)
        entry = out[target].setdefault(source, {"per_layer": {}, "per_layer_ci": {}})
        entry["per_layer"][layer] = mean
        entry["per_layer_ci"][layer] = half
        if pen.get((target, source)) == layer:
            entry.update(acc=mean, ci=half, seconds=float(np.mean(secs[(target, source, layer)])), layer=layer)
    return out


PEN = "__penultimate__"  # key of values[target][PEN][source] = the penultimate layer's name


def score_table(score_rows: list[dict[str, Any]]) -> tuple[dict, dict]:
    """``values[target][score][source][layer]`` (mean over episodes) and ``seconds[score]`` (list)."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    secs: dict[str, list[float]] = defaultdict(list)
    pen: dict[str, dict[str, str]] = defaultdict(dict)
    for r in score_rows:
        acc[r["target"]][r["score"]][r["source"]][r["layer"]].append(r["value"])
        if r["penultimate"]:
            secs[r["score"]].append(r["seconds"])
            pen[r["target"]][r["source"]] = r["layer"]
    # values[target][score][source][layer] = mean, and values[target][PEN][source] = a layer name
    values: dict[str, dict[str, dict[str, Any]]] = {
        t: {
            s: {src: {layer: _mean(v) for layer, v in layers.items()} for src, layers in d2.items()}
            for s, d2 in d1.items()
        }
        for t, d1 in acc.items()
    }
    for t in values:
        values[t][PEN] = pen[t]
    return values, secs


def _penultimate(values: dict, gt: dict, target: str, score: str) -> dict[str, float]:
    out = {}
    pen = values.get(target, {}).get(PEN, {})
    for src, layers in values.get(target, {}).get(score, {}).items():
        if src in gt.get(target, {}) and "acc" in gt[target][src] and pen.get(src) in layers:
            out[src] = layers[pen[src]]
    return {k: v for k, v in out.items() if not math.isnan(v)}


def otce_fitted(values: dict, gt: dict) -> dict[str, dict[str, float]]:
    """Leave-one-target-out OTCE: ``{target: {source: λ1 W_D + λ2 W_T + λ3}}`` (λ fitted on other targets)."""
    parts = {t: (_penultimate(values, gt, t, "otce_wd"), _penultimate(values, gt, t, "otce_wt")) for t in gt}
    out: dict[str, dict[str, float]] = {}
    for target in gt:
        wd, wt, acc = [], [], []
        for other, (d, w) in parts.items():
            if other == target:
                continue
            for src in d:
                if src in w:
                    wd.append(d[src])
                    wt.append(w[src])
                    acc.append(gt[other][src]["acc"])
        if len(acc) < 3:
            continue
        try:
            lam = fit_otce_weights(wd, wt, acc)
        except ValueError:
            continue
        d, w = parts[target]
        out[target] = {src: lam[0] * d[src] + lam[1] * w[src] + lam[2] for src in d if src in w}
    return out


def write_report(
    records: list[dict[str, Any]],
    score_rows: list[dict[str, Any]],
    zoo_meta: dict[str, Any],
    out: Path,
    *,
    settings: dict[str, Any],
    layer_free: Sequence[str],
    zoo_seconds: float,
    total_seconds: float,
) -> dict[str, Any]:
    gt = ground_truth(records)
    values, secs = score_table(score_rows)
    targets = sorted(gt)
    ranked = [s for s in sorted({r["score"] for r in score_rows}) if s not in PARTS and s != PEN]
    per_target: dict[str, dict[str, dict[str, float]]] = {t: {} for t in targets}
    fitted = otce_fitted(values, gt)
    for t in targets:
        for s in ranked:
            sv = _penultimate(values, gt, t, s)
            if len(sv) >= 2:
                per_target[t][s] = summarise(sv, {k: gt[t][k]["acc"] for k in sv}).as_dict()
        if t in fitted and len(fitted[t]) >= 2:
            per_target[t]["otce_fitted"] = summarise(fitted[t], {k: gt[t][k]["acc"] for k in fitted[t]}).as_dict()
    names = ranked + (["otce_fitted"] if fitted else [])
    secs["otce_fitted"] = secs.get("otce_sim", [])
    ft_secs = [r["seconds"] for r in records if r["penultimate"]]
    ft_mean = float(np.mean(ft_secs)) if ft_secs else float("nan")
    summary = {}
    for s in names:
        rows = [per_target[t][s] for t in targets if s in per_target[t]]
        sec = float(np.mean(secs[s])) if secs.get(s) else float("nan")
        summary[s] = {m: _mean([r[m] for r in rows]) for m in MEASURES} | {
            "seconds": sec,
            "speedup": ft_mean / sec if sec > 0 else float("inf"),
        }
    layer_sel = layer_selection(gt, values, [s for s in ranked if s not in layer_free])

    lines = [
        "# Metric-quality benchmark",
        "",
        "Measured on 2 shared CPU cores (1 thread), short training: timings are inflated and noisy.",
        f"MNIST here is the 10k test set. Settings: `{json.dumps(settings)}`.",
        f"Zoo: {len(zoo_meta)} source models ({zoo_seconds:.0f} s to train/load); total run {total_seconds:.0f} s.",
        "",
        "## Summary: mean over targets (penultimate layer)",
        "",
        "| score | "
        + " | ".join(f"wτ {t}" for t in targets)
        + " | mean Pearson | mean Spearman | mean Kendall | mean wτ | top-1 | mean regret"
        + " | s/score | fine-tune s | × cheaper |",
        "|---|" + "---|" * (len(targets) + 9),
    ]
    for s in sorted(names, key=lambda k: -np.nan_to_num(summary[k]["weighted_tau"], nan=-9)):
        sm = summary[s]
        cells = [f"{per_target[t][s]['weighted_tau']:+.2f}" if s in per_target[t] else "–" for t in targets]
        lines.append(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {sm['pearson']:+.2f} | {sm['spearman']:+.2f} | {sm['kendall']:+.2f} | "
            f"**{sm['weighted_tau']:+.2f}** | {sm['top1']:.2f} | {sm['regret']:.3f} | "
            f"{sm['seconds']:.3f} | {ft_mean:.1f} | {sm['speedup']:.0f} |"
        )
    lines += [
        "",
        "`otce_fitted`: OTCE with λ fitted on the other targets' pairs (leave-one-target-out); its time is OTCE's.",
        "Fine-tune s: mean time of one fine-tuning run (one seed) at the penultimate layer.",
        "",
    ]
    for t in targets:
        lines += [
            f"## Target `{t}` ({len(gt[t])} sources)",
            "",
            "| score | n | Pearson | Spearman | Kendall | weighted τ | top-1 | regret |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in names:
            if s in per_target[t]:
                r = per_target[t][s]
                lines.append(
                    f"| {s} | {int(r['n'])} | {r['pearson']:+.3f} | {r['spearman']:+.3f} | {r['kendall']:+.3f} | "
                    f"{r['weighted_tau']:+.3f} | {r['top1']:.0f} | {r['regret']:.3f} |"
                )
        lines.append("")
    sources = sorted(zoo_meta)
    lines += [
        "## Ground truth: test accuracy after the fixed fine-tuning budget (mean ± 95% CI over seeds)",
        "",
        "| source | arch | source data | held-out acc | " + " | ".join(targets) + " |",
        "|---|---|---|---|" + "---|" * len(targets),
    ]
    for src in sources:
        m = zoo_meta[src]
        cells = [
            f"{gt[t][src]['acc']:.3f} ± {gt[t][src]['ci']:.3f}" if src in gt[t] and "acc" in gt[t][src] else "–"
            for t in targets
        ]
        lines.append(
            f"| {src} | {m['arch']}{m['width'] if m['arch'] != 'lenet' else ''} | {m['data']} | "
            f"{m['held_out_acc']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Layer selection (every stage fine-tuned and scored)",
        "",
        f"Pairs: {layer_sel['pairs']}; always-penultimate baseline picks the best layer in "
        f"{layer_sel['baseline_top1']:.2f} of them (mean regret {layer_sel['baseline_regret']:.3f}).",
        "",
        "| score | best-layer agreement | mean regret | mean Kendall over layers |",
        "|---|---|---|---|",
    ]
    for s, r in sorted(layer_sel["scores"].items(), key=lambda kv: -kv[1]["top1"]):
        lines.append(f"| {s} | {r['top1']:.2f} | {r['regret']:.3f} | {r['kendall']:+.2f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    pen_scores = {
        t: {s: _penultimate(values, gt, t, s) for s in ranked} | {"otce_fitted": fitted.get(t, {})} for t in targets
    }
    result = {
        "summary": summary,
        "per_target": per_target,
        "ground_truth": gt,
        "layer_selection": layer_sel,
        "scores": pen_scores,
        "zoo": zoo_meta,
        "settings": settings,
        "fine_tune_seconds": ft_mean,
        "total_seconds": total_seconds,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    plot(gt, values, fitted, targets, names, per_target, out)
    return result


def layer_selection(gt: dict, values: dict, scores: Sequence[str]) -> dict[str, Any]:
    """Per (target, source) with ≥ 2 fine-tuned layers: does the best-scored layer have the best accuracy?"""
    from tguide.select.correlation import kendall, regret, top1

    res: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in scores}
    base_top, base_reg, pairs = [], [], 0
    for t, by_src in gt.items():
        for src, e in by_src.items():
            acc = e["per_layer"]
            if len(acc) < 2:
                continue
            layers = list(acc)
            if "layer" not in e:
                continue
            pairs += 1
            pen = e["layer"]
            best = max(acc.values())
            base_top.append(float(acc[pen] >= best))
            base_reg.append(best - acc[pen])
            for s in scores:
                sv = values.get(t, {}).get(s, {}).get(src, {})
                common = [layer for layer in layers if layer in sv and not math.isnan(sv[layer])]
                if len(common) < 2:
                    continue
                x, y = [sv[layer] for layer in common], [acc[layer] for layer in common]
                res[s]["top1"].append(top1(x, y))
                res[s]["regret"].append(regret(x, y))
                k = kendall(x, y)
                if not math.isnan(k):
                    res[s]["kendall"].append(k)
    return {
        "pairs": pairs,
        "baseline_top1": _mean(base_top),
        "baseline_regret": _mean(base_reg),
        "scores": {s: {m: _mean(v) for m, v in d.items()} | {"n": len(d.get("top1", []))} for s, d in res.items() if d},
    }


def plot(
    gt: dict, values: dict, fitted: dict, targets: list[str], names: list[str], per_target: dict, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(targets), len(names), figsize=(2.2 * len(names), 2.0 * len(targets)), squeeze=False)
    for i, t in enumerate(targets):
        for j, s in enumerate(names):
            ax = axes[i][j]
            sv = fitted.get(t, {}) if s == "otce_fitted" else _penultimate(values, gt, t, s)
            xs = [sv[k] for k in sv]
            ys = [gt[t][k]["acc"] for k in sv]
            ax.scatter(xs, ys, s=10)
            wt = per_target[t].get(s, {}).get("weighted_tau", float("nan"))
            ax.set_title(f"{s}\n{t} wτ={wt:+.2f}", fontsize=6)
            ax.tick_params(labelsize=5)
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 3.2))
    width = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        ax.bar(
            [j + i * width for j in range(len(names))],
            [per_target[t].get(s, {}).get("weighted_tau", np.nan) for s in names],
            width,
            label=t,
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("weighted Kendall τ")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "weighted_tau.png", dpi=110)
    plt.close(fig)
