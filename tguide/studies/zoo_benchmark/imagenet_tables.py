"""``imagenet_quality.md`` / ``.json``: the ImageNet-only tables, the published claims, the pre-registered test.

Claims are tested with the paired sub-pool τ_w difference of :func:`.imagenet_quality.paired`:
**holds** when its 95% interval is above 0, **reversed** when below 0, **not resolved** otherwise;
a claim with several orderings holds when each of them holds.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tguide.studies.zoo_benchmark.imagenet import imagenet_pool, param_count, source_prior
from tguide.studies.zoo_benchmark.imagenet_quality import (
    BASELINES,
    METRICS,
    Evaluation,
    evaluate,
    mixed_truth,
    paired,
    read_extra_scores,
    saturation,
)
from tguide.studies.zoo_benchmark.imagenet_report import read_truth
from tguide.studies.zoo_benchmark.preregistered import E1, E2, ESTIMATORS
from tguide.studies.zoo_benchmark.protocol import pool as mixed_pool
from tguide.studies.zoo_benchmark.scoring import SCORES, read_scores
from tguide.studies.zoo_benchmark.scoring import source_prior as mixed_prior

__all__ = ["CLAIMS", "DEFAULT_SELECTORS", "claims", "default_selector", "write_quality"]

SCORE_ONLY = [m for m in SCORES if m not in ("knn", "linear_probe")]
CLAIMS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Shao et al., ECCV 2022",
        "SFDA > NLEEP > LogME > LEEP",
        (("sfda", "nleep"), ("nleep", "logme"), ("logme", "leep")),
    ),
    ("Wang et al., ICCV 2023 (NCTI)", "NCTI above SFDA and LogME", (("ncti", "sfda"), ("ncti", "logme"))),
    ("Gholami et al., ICCV 2023 (ETran)", "ETran above SFDA and LogME", (("etran", "sfda"), ("etran", "logme"))),
    (
        "Singh et al., 2025",
        "the ImageNet top-1 prior beats the transferability metrics",
        tuple(("source_acc", m) for m in SCORE_ONLY),
    ),
)
DEFAULT_SELECTORS = ("knn", "logme", E1)  # the pre-registration's order of simplicity


def _verdict(d: dict[str, Any]) -> str:
    if not d["n_targets"]:
        return "cannot be tested"
    return "holds" if d["low"] > 0 else ("reversed" if d["high"] < 0 else "not resolved")


def claims(ev: Evaluation) -> list[dict[str, Any]]:
    """Each published claim: its pairwise orderings with the paired τ_w difference and a verdict."""
    out = []
    for source, text, pairs in CLAIMS:
        rows = []
        for a, b in pairs:
            if a not in ev["summary"] or b not in ev["summary"]:
                rows.append({"a": a, "b": b, "verdict": "cannot be tested", "n_targets": 0})
                continue
            d = paired(ev, a, b)
            rows.append({"a": a, "b": b, **d, "verdict": _verdict(d)})
        verdicts = [r["verdict"] for r in rows]
        if all(v == "holds" for v in verdicts):
            overall = "holds"
        elif any(v == "reversed" for v in verdicts):
            overall = "does not hold"
        elif any(v == "cannot be tested" for v in verdicts):
            overall = "cannot be tested here"
        else:
            overall = "not supported (interval includes 0)"
        out.append({"source": source, "claim": text, "overall": overall, "pairs": rows})
    return out


def default_selector(ev: Evaluation) -> dict[str, Any]:
    """The pre-registration's rule: highest mean τ_w; within 0.01 of the best → the simplest."""
    means = {m: ev["summary"][m]["mean_tau_w"] for m in DEFAULT_SELECTORS if m in ev["summary"]}
    best = max(means.values())
    chosen = next(m for m in DEFAULT_SELECTORS if m in means and means[m] >= best - 0.01)
    loto = {}
    for held in ev["per_target"].get("knn", {}):
        others = {
            m: sum(v["tau_w"] for t, v in ev["per_target"][m].items() if t != held) / (len(ev["per_target"][m]) - 1)
            for m in means
        }
        b = max(others.values())
        c = next(m for m in DEFAULT_SELECTORS if m in others and others[m] >= b - 0.01)
        loto[held] = {"chosen": c, **ev["per_target"][c][held]}
    return {"means": means, "chosen": chosen, "loto": loto}


def _f(x: float, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{nd}f}"


def _ci(c: tuple[float, float, float]) -> str:
    return f"{_f(c[0])} [{_f(c[1])}, {_f(c[2])}]"


def _score_table(ev: Evaluation, sat: dict[str, Any], title: str) -> list[str]:
    targets = ev["targets"]
    lines = [
        f"#### {title}",
        "",
        "| score | "
        + " | ".join(targets)
        + " | mean τ_w | sub-pool τ_w [95% CI] | − kNN τ_w [95% CI] | top-1 | regret | sub-pool regret "
        "| saturated (ties among D ≥ N−1) |",
        "|---|" + "---:|" * (len(targets) + 6) + "---|",
    ]
    summ = ev["summary"]
    for m in sorted(summ, key=lambda k: -summ[k]["mean_tau_w"]):
        s = summ[m]
        cells = [_f(ev["per_target"][m].get(t, {}).get("tau_w", float("nan")), 2) for t in targets]
        dk = paired(ev, m, "knn") if m != "knn" else None
        dtxt = f"{_f(dk['diff'])} [{_f(dk['low'])}, {_f(dk['high'])}]" if dk and dk["n_targets"] else "—"
        tied = sat["tied"].get(m.split("+")[0], {})
        sat_txt = ", ".join(f"{t} ({len(v)})" for t, v in tied.items()) if tied else ""
        tag = f"**{m}**" if m in BASELINES else m
        lines.append(
            f"| {tag} | " + " | ".join(cells) + f" | {_f(s['mean_tau_w'])} | {_ci(s['subpool_tau_w'])} | {dtxt} | "
            f"{s['top1']:.2f} | {s['regret']:.3f} | {s['subpool_regret'][0]:.3f} | {sat_txt} |"
        )
    return lines + [""]


def _pairs_text(pairs: list[dict[str, Any]]) -> str:
    def one(p: dict[str, Any]) -> str:
        nan = float("nan")
        return (
            f"{p['a']}−{p['b']} {_f(p.get('diff', nan))} [{_f(p.get('low', nan))}, {_f(p.get('high', nan))}] "
            f"{p['verdict']}"
        )

    if len(pairs) <= 3:
        return "; ".join(one(p) for p in pairs)
    by: dict[str, list[str]] = {}
    for p in pairs:
        by.setdefault(p["verdict"], []).append(f"{p['b']} {_f(p.get('diff', float('nan')), 2)}")
    return "; ".join(f"{v} vs {len(n)}: {', '.join(n)}" for v, n in by.items())


def _n_train(path: Path) -> dict[str, int]:
    out = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            out[r["target"]] = int(r["n_train"])
    return out


def write_quality(out: Path, src: Path | None = None, n_pools: int = 200) -> dict[str, Any]:
    """Evaluate both pools from the files in ``out`` (mixed pool's from ``src``, default ``out``)."""
    src = src or out
    members = imagenet_pool()
    table = read_scores(out / "imagenet_scores.csv")
    truth = read_truth(out / "imagenet_groundtruth.csv")
    priors = {m.name: source_prior(m) for m in members}
    params = {m.name: param_count(m) for m in members}
    sat = saturation(table, _n_train(out / "imagenet_groundtruth.csv"))
    result: dict[str, Any] = {"saturation": sat, "imagenet": {}, "mixed": {}}
    for gt in ("linear_probe", "finetune"):
        ev = evaluate(table, truth[gt], priors, params, METRICS, n_pools)
        result["imagenet"][gt] = ev
    mixed_ok = (src / "zoo_scores.csv").is_file() and (src / "zoo_groundtruth.csv").is_file()
    if mixed_ok:
        mtable = read_scores(src / "zoo_scores.csv")
        read_extra_scores(mtable, out / "zoo_scores_gbc_pca64.csv")
        mtruth = mixed_truth(src / "zoo_groundtruth.csv")
        mm = mixed_pool()
        mp = {m.name: mixed_prior(m) for m in mm}
        mpar = {m.name: float(m.entry.params) for m in mm}
        for gt in ("linear_probe", "finetune"):
            result["mixed"][gt] = evaluate(mtable, mtruth[gt], mp, mpar, ("knn", "logme", "gbc", E1, E2), n_pools)
    lines = ["# ImageNet-only pool: score quality, published claims, pre-registered estimators", ""]
    lines += [
        "Pool: " + ", ".join(m.name for m in members) + ". Prior: reported ImageNet top-1 (ShuffleNetV2 trunk: "
        "0.60 assumed, the full ShuffleNetV2 0.5×; random control: 0.001). Truths: linear probe (primary), "
        "fine-tune cells that are not under-trained (secondary).",
        "",
        "Saturation (N < D): per target, the candidates with D ≥ N − 1 on the full train split: "
        + "; ".join(f"{t} (N={sat['n_train'][t]}): {len(v)} of {len(members)}" for t, v in sat["wide"].items())
        + ". The last column lists, per score, the targets where ≥ 2 of them tie (count of tied candidates).",
        "",
    ]
    for gt, ev in result["imagenet"].items():
        if ev["summary"]:
            lines += _score_table(
                ev, sat, f"ImageNet-only pool, {gt.replace('_', ' ')} truth ({len(ev['targets'])} targets)"
            )
        else:
            lines += [
                f"#### ImageNet-only pool, {gt.replace('_', ' ')} truth",
                "",
                "No target with ≥ 4 usable cells.",
                "",
            ]
    lines += ["### Published claims (linear-probe truth; fine-tune truth beside it)", ""]
    lines += ["| source | claim | verdict (probe) | orderings: τ_w(a) − τ_w(b) [95% CI] | verdict (fine-tune) |"]
    lines += ["|---|---|---|---|---|"]
    result["claims"] = {gt: claims(ev) for gt, ev in result["imagenet"].items() if ev["summary"]}
    for i, c in enumerate(result["claims"].get("linear_probe", [])):
        pairs = _pairs_text(c["pairs"])
        ft = result["claims"].get("finetune", [])
        lines.append(
            f"| {c['source']} | {c['claim']} | **{c['overall']}** | {pairs} | {ft[i]['overall'] if ft else '—'} |"
        )
    lines += ["", "### Pre-registered estimators vs kNN (decision rule: 95% CI of the τ_w difference above 0)", ""]
    lines += [
        "| zoo | truth | estimator | mean τ_w (kNN) | − kNN [95% CI] | beats kNN | regret (kNN) "
        "| targets won / lost vs kNN (whole pool; descriptive) |"
    ]
    lines += ["|---|---|---|---:|---:|---|---:|---|"]
    result["preregistered"] = []
    for zoo in ("mixed", "imagenet"):
        for gt, ev in result[zoo].items():
            if "knn" not in ev["summary"]:
                continue
            k = ev["summary"]["knn"]
            for e in ESTIMATORS:
                if e not in ev["summary"]:
                    continue
                d = paired(ev, e, "knn")
                s = ev["summary"][e]
                pe, pk = ev["per_target"][e], ev["per_target"]["knn"]
                won = sum(pe[t]["tau_w"] > pk[t]["tau_w"] for t in pe if t in pk)
                lost = sum(pe[t]["tau_w"] < pk[t]["tau_w"] for t in pe if t in pk)
                result["preregistered"].append({"zoo": zoo, "truth": gt, "estimator": e, "won": won, "lost": lost, **d})
                lines.append(
                    f"| {zoo} | {gt.replace('_', ' ')} ({d['n_targets']} targets) | {e} | {_f(s['mean_tau_w'])} "
                    f"({_f(k['mean_tau_w'])}) | {_f(d['diff'])} [{_f(d['low'])}, {_f(d['high'])}] | "
                    f"**{'yes' if d['beats_knn'] else 'no'}** | {s['regret']:.3f} ({k['regret']:.3f}) | "
                    f"{won} / {lost} |"
                )
    if "linear_probe" in result["mixed"]:
        dsel = default_selector(result["mixed"]["linear_probe"])
        result["default_selector"] = dsel
        im = result["imagenet"]["linear_probe"]["summary"].get(dsel["chosen"], {})
        lines += [
            "",
            "### Default selector (pre-registration §1, mixed pool, linear-probe truth)",
            "",
            "Mean τ_w: "
            + ", ".join(f"{m} {_f(v)}" for m, v in dsel["means"].items())
            + f" → **{dsel['chosen']}**. Leave-one-target-out: "
            + ", ".join(
                f"{t}: {v['chosen']} τ_w {_f(v['tau_w'])} regret {v['regret']:.3f}" for t, v in dsel["loto"].items()
            )
            + f". On the ImageNet-only pool (second held-out check): τ_w {_f(im.get('mean_tau_w', float('nan')))}, "
            f"regret {im.get('regret', float('nan')):.3f}.",
        ]
    (out / "imagenet_quality.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    slim = {
        "saturation": sat,
        "claims": result["claims"],
        "preregistered": result["preregistered"],
        "default_selector": result.get("default_selector"),
        "summary": {z: {gt: ev["summary"] for gt, ev in result[z].items()} for z in ("imagenet", "mixed")},
    }
    (out / "imagenet_quality.json").write_text(json.dumps(slim, indent=1, default=float) + "\n", encoding="utf-8")
    return result
