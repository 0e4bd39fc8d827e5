"""Do transferability scores pick the right pretrained model? Scores of the real zoo vs the ground truth.

    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data python bench/zoo_quality.py            # score + report
    python bench/zoo_quality.py --report-only                                          # tables from the CSVs
    python bench/zoo_quality.py --quick --out /tmp/zq                                  # < 1 min smoke run

Phase 1 (scores, resumable): for every target of :mod:`tguide.select.targets` and every candidate
of :func:`tguide.select.groundtruth.zoo_candidates` (the 11 checkpoints of ``shared/models`` + a
random-init ResNet-20), the penultimate features and (where the model has a head) the source-class
probabilities of the target's **train split** — the labelled data a user has before fine-tuning —,
then every registered score (:mod:`tguide.metrics.registry`) in three setups that differ in one
component: ``full`` (the whole train split) and ``half_a`` / ``half_b`` (two disjoint seeded
stratified halves of it). Written to ``<out>/zoo_scores.csv`` (long format, with seconds per
score) as each (target, candidate) finishes; finished pairs are skipped on restart.

Phase 2 (report): reads ``<out>/zoo_groundtruth.csv`` (``bench/zoo_groundtruth.py``, fixed before
any score was computed) and writes ``<out>/zoo_quality.md`` + ``zoo_quality.json``: per target
τ_w, Kendall, Pearson, top-1/top-3 hit and relative top accuracy of every score and baseline;
the same over 200 random sub-pools per target (sizes 4..12, the same pools for every score) with
bootstrap 95% intervals and the paired difference to the best baseline; setup stability; and a
leave-one-target-out choice of score (chosen on the other four targets).

Baselines (what a user could do instead of a score): ``source_acc`` (the checkpoint's reported
source accuracy, else the one measured on the shared data; the ShuffleNetV2 trunk has none and
gets 0.60, the published ImageNet top-1 of the full ShuffleNetV2 0.5×; the random control 0.10),
``params`` (parameter count), ``knn`` and ``linear_probe`` (cross-validated on the train split),
``random`` (a seeded random score). OTCE is not scored: it needs the source data, and the
ImageNet sources are not available here.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tguide.metrics._subset import stratified_subset
from tguide.metrics.registry import METRICS
from tguide.select.evaluation import (agreement, bootstrap_ci, leave_one_target_out, setup_stability, subpools,
                                      zscore_mean)
from tguide.select.groundtruth import DEFAULT_CACHE, cached_inputs, extract_features, normalise, zoo_candidates
from tguide.data.targets import BENCHMARK_TARGETS as TARGETS
from tguide.data.targets import load_target

REPO = Path(__file__).resolve().parents[1]
SCORES = ("hscore", "hscore_shrinkage", "transrate", "transrate_comparable", "logme", "leep", "nce", "sfda",
          "ncti", "etran", "gbc", "nleep", "knn", "linear_probe")
BASELINES = ("source_acc", "params", "knn", "linear_probe", "random")
SETUPS = ("full", "half_a", "half_b")
SHUFFLENET_PRIOR = 0.60  # ImageNet top-1 of the full ShuffleNetV2 0.5x (Ma et al., ECCV 2018), the trunk's origin
FIELDS = ["target", "candidate", "setup", "metric", "score", "seconds"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def source_prior(cand: Any) -> float:
    e = cand.entry
    if cand.name == "random_resnet20":
        return 0.10
    acc = e.reported_acc if e.reported_acc is not None else e.measured_acc
    return float(acc) if acc is not None else SHUFFLENET_PRIOR


@torch.no_grad()
def source_probs(model: torch.nn.Module, x_u8: torch.Tensor, entry: Any, batch: int = 200) -> torch.Tensor | None:
    if not entry.has_head:
        return None
    model.eval()
    return torch.cat([model(normalise(x_u8[i:i + batch], entry)).double().softmax(1)
                      for i in range(0, len(x_u8), batch)])


def setup_indices(labels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    n = len(labels)
    half = stratified_subset(labels, n // 2, seed=seed)
    other = torch.tensor(sorted(set(range(n)) - set(half.tolist())), dtype=torch.int64)
    return {"full": torch.arange(n), "half_a": half, "half_b": other}


def score_pair(features: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor | None) -> list[tuple[str, str, float, float]]:
    """``[(setup, metric, score, seconds)]`` for one (target, candidate); pool-normalised scores store terms."""
    rows = []
    for setup, idx in setup_indices(labels).items():
        f, y = features[idx].double(), labels[idx]
        p = probs[idx] if probs is not None else None
        for name in SCORES:
            info = METRICS[name]
            if info.needs_source_probs and p is None:
                continue
            t0 = time.perf_counter()
            if info.pool_normalised:
                terms_fn, _ = info.load_pool()  # type: ignore[misc]
                terms = terms_fn(f, y)
                dt = time.perf_counter() - t0
                for k, v in vars(terms).items():
                    rows.append((setup, f"{name}.{k}", float(v), dt))
                continue
            value = float(info(*info.arguments(f, y, source_probs=p)))
            rows.append((setup, name, value, time.perf_counter() - t0))
    return rows


def run_scores(out: Path, targets: list[str], candidates: list[Any], cache: Path | None, root: str | None,
               per_class: tuple[int, int, int] | None) -> None:
    path = out / "zoo_scores.csv"
    done = set()
    if path.is_file():
        with path.open() as fh:
            done = {(r["target"], r["candidate"]) for r in csv.DictReader(fh)}
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        if new:
            w.writeheader()
        for tname in targets:
            target = load_target(tname, root, per_class=per_class)
            for cand in candidates:
                if (tname, cand.name) in done:
                    continue
                t0 = time.perf_counter()
                data = cached_inputs(target, cand.entry, cache)
                x, y = data["train"]
                model = cand.build()
                feats = extract_features(model, x, cand.entry)
                probs = source_probs(model, x, cand.entry)
                t_extract = time.perf_counter() - t0
                rows = score_pair(feats, y, probs)
                rows.append(("full", "extract", float(feats.shape[1]), t_extract))
                for setup, metric, score, sec in rows:
                    w.writerow({"target": tname, "candidate": cand.name, "setup": setup, "metric": metric,
                                "score": repr(score), "seconds": f"{sec:.4f}"})
                fh.flush()
                log(f"scored {tname:16s} {cand.name:22s} D={feats.shape[1]:5d} extract {t_extract:.1f}s "
                    f"scores {sum(r[3] for r in rows[:-1]):.1f}s")


# ----------------------------------------------------------------------------- report


def read_scores(path: Path) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(target, setup): {metric: {candidate: score}}}`` and the seconds table."""
    table: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    with path.open() as fh:
        for r in csv.DictReader(fh):
            table[(r["target"], r["setup"])][r["metric"]][r["candidate"]] = float(r["score"])
    return table


def read_seconds(path: Path) -> dict[str, list[float]]:
    sec: dict[str, list[float]] = defaultdict(list)
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if r["setup"] == "full":
                sec[r["metric"].split(".")[0]].append(float(r["seconds"]))
    return sec


def pool_score(metric: str, scores: dict[str, dict[str, float]], pool: list[str]) -> dict[str, float]:
    """A metric's scores on ``pool``; NCTI/ETran are min-max normalised across ``pool`` itself."""
    info = METRICS.get(metric)
    if info is not None and info.pool_normalised:
        _, combine = info.load_pool()  # type: ignore[misc]
        term_names = sorted(k.split(".", 1)[1] for k in scores if k.startswith(metric + "."))
        members = [c for c in pool if all(c in scores[f"{metric}.{t}"] for t in term_names)]
        if len(members) < 2:
            return {}
        from tguide.metrics.functional import etran as _etran, ncti as _ncti

        cls = {"ncti": _ncti.NCTITerms, "etran": _etran.ETranTerms}[metric]
        terms = [cls(**{t: torch.tensor(scores[f"{metric}.{t}"][c], dtype=torch.float64) for t in term_names})
                 for c in members]
        return dict(zip(members, combine(terms).tolist()))
    return {c: scores[metric][c] for c in pool if c in scores.get(metric, {})}


def combo_score(metric: str, scores: dict[str, dict[str, float]], pool: list[str]) -> dict[str, float]:
    """``"a+b"``: the mean of the z-scores of ``a`` and ``b`` over ``pool`` (a documented combination)."""
    if "+" not in metric:
        return pool_score(metric, scores, pool)
    parts = [pool_score(m, scores, pool) for m in metric.split("+")]
    if any(len(q) < 2 for q in parts):
        return {}
    return zscore_mean(parts)


def with_baselines(scores: dict[str, dict[str, float]], priors: dict[str, float], params: dict[str, float],
                   seed: int) -> dict[str, dict[str, float]]:
    out = dict(scores)
    out["source_acc"] = dict(priors)
    out["params"] = dict(params)
    rng = np.random.default_rng(seed)
    out["random"] = {c: float(v) for c, v in zip(sorted(priors), rng.permutation(len(priors)))}
    return out


def report(out: Path, candidates: list[Any], n_pools: int = 200) -> dict[str, Any]:
    gt_path = out / "zoo_groundtruth.csv"
    if not gt_path.is_file():
        raise SystemExit(f"no ground truth at {gt_path}: run bench/zoo_groundtruth.py first")
    truth: dict[str, dict[str, dict[str, float]]] = {"finetune": defaultdict(dict), "linear_probe": defaultdict(dict)}
    with gt_path.open() as fh:
        for r in csv.DictReader(fh):
            if r["finetune_acc_mean"] not in ("", "nan"):
                truth["finetune"][r["target"]][r["candidate"]] = float(r["finetune_acc_mean"])
            if r["linear_probe_acc"] not in ("", "nan"):
                truth["linear_probe"][r["target"]][r["candidate"]] = float(r["linear_probe_acc"])
    table = read_scores(out / "zoo_scores.csv")
    seconds = read_seconds(out / "zoo_scores.csv")
    priors = {c.name: source_prior(c) for c in candidates}
    params = {c.name: float(c.entry.params) for c in candidates}
    names = [c.name for c in candidates]
    targets = sorted({t for t, _ in table})
    metrics = [m for m in SCORES] + ["source_acc", "params", "random"]
    # documented combinations: each score averaged (z-scores over the pool) with the kNN baseline
    metrics += [f"{m}+knn" for m in SCORES if m not in ("knn", "linear_probe")]
    result: dict[str, Any] = {"targets": targets, "candidates": names, "gt": {}}
    for gt_name, gt in truth.items():
        per_target: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        pools_tau: dict[str, list[float]] = defaultdict(list)
        pools_rel: dict[str, list[float]] = defaultdict(list)
        pools_top1: dict[str, list[float]] = defaultdict(list)
        diff_vs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for ti, t in enumerate(targets):
            if t not in gt or len(gt[t]) < 4:
                continue
            full = with_baselines(table[(t, "full")], priors, params, seed=ti)
            for m in metrics:
                s = combo_score(m, full, names)
                if len(s) >= 2:
                    per_target[m][t] = agreement(s, gt[t])
            for pi, pool in enumerate(subpools(sorted(gt[t]), n_pools, 4, seed=ti)):
                taus = {}
                for m in metrics:
                    s = combo_score(m, full, pool) if m != "random" else {
                        c: float(v) for c, v in zip(pool, np.random.default_rng(1000 * ti + pi).permutation(len(pool)))}
                    if len(s) >= 4:
                        a = agreement(s, gt[t], pool)
                        taus[m] = a["weighted_tau"]
                        pools_tau[m].append(a["weighted_tau"])
                        pools_rel[m].append(a["rel_top_acc"])
                        pools_top1[m].append(a["top1"])
                for m in metrics:
                    for b in BASELINES:
                        if m in taus and b in taus and m != b:
                            diff_vs[m][b].append(taus[m] - taus[b])
        summary = {}
        for m in metrics:
            if m not in per_target:
                continue
            taus_t = [per_target[m][t]["weighted_tau"] for t in per_target[m]]
            summary[m] = {
                "mean_tau_w": float(np.mean(taus_t)),
                "per_target": per_target[m],
                "subpool_tau_w": bootstrap_ci(pools_tau[m]),
                "subpool_rel_top_acc": bootstrap_ci(pools_rel[m]),
                "subpool_top1": bootstrap_ci(pools_top1[m]),
                "minus_baseline": {b: bootstrap_ci(v) for b, v in diff_vs[m].items()},
            }
        per_tau = {m: {t: per_target[m][t]["weighted_tau"] for t in per_target[m]} for m in summary
                   if m not in ("random",)}
        chosen = leave_one_target_out(per_tau) if per_tau and len(targets) > 1 else {}
        loto = {t: {"chosen": c, "tau_w": per_tau[c].get(t, float("nan"))} for t, c in chosen.items()}
        result["gt"][gt_name] = {"summary": summary, "loto": loto,
                                 "loto_mean_tau_w": float(np.nanmean([v["tau_w"] for v in loto.values()])) if loto else float("nan")}
    # setup stability: Kendall between the candidate orderings of the full split and its two halves
    stab = {}
    for m in SCORES:
        vals = []
        for t in targets:
            orders = [pool_score(m, table[(t, s)], names) for s in SETUPS]
            vals.append(setup_stability([o for o in orders if o]))
        stab[m] = float(np.nanmean(vals))
    result["stability"] = stab
    result["seconds"] = {m: float(np.median(v)) for m, v in seconds.items()}
    gt_sec = []
    runs = out / "zoo_groundtruth_runs.jsonl"
    if runs.is_file():
        for line in runs.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "finetune" and "seconds" in rec:
                gt_sec.append(float(rec["seconds"]))
    result["finetune_seconds_median"] = float(np.median(gt_sec)) if gt_sec else float("nan")
    (out / "zoo_quality.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "zoo_quality.md").write_text(markdown(result))
    return result


def _f(x: float, nd: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    lines = []
    for gt_name, block in res["gt"].items():
        summ = block["summary"]
        targets = res["targets"]
        lines += [f"### Ground truth: {gt_name.replace('_', ' ')} accuracy", "",
                  "| score | " + " | ".join(targets) + " | mean τ_w | sub-pool τ_w (95% CI) | sub-pool rel. top acc "
                  "| top-1 hit | − best baseline τ_w (95% CI) | stability |",
                  "|---|" + "---|" * (len(targets) + 6)]
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
            lines.append(f"| {tag} | " + " | ".join(cells) + f" | {_f(s['mean_tau_w'])} | {_f(sp[0])} [{_f(sp[1])}, "
                         f"{_f(sp[2])}] | {rel[0]:.3f} | {top1[0]:.2f} | {dtxt} | {_f(stab)} |")
        lo = block["loto"]
        lines += ["", "Leave-one-target-out choice (chosen on the other targets by mean τ_w): " +
                  ", ".join(f"{t}: {v['chosen']} (τ_w {_f(v['tau_w'])})" for t, v in lo.items()) +
                  f"; mean τ_w {_f(block['loto_mean_tau_w'])}.", ""]
    sec = res["seconds"]
    lines += ["### Cost (median seconds per target × candidate, 1 CPU thread)", "",
              "| step | seconds |", "|---|---|"]
    for m, v in sorted(sec.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {m} | {v:.3f} |")
    lines.append(f"| one fine-tuning run (ground truth) | {res['finetune_seconds_median']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--cache", default=None, help=f"input cache (default {DEFAULT_CACHE}; 'none' disables)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--candidates", nargs="*", default=None)
    ap.add_argument("--imagenet-size", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="2 candidates x cifar10, 5/3/5 per class")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--pools", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.candidates
    per_class = None
    targets = args.targets or list(TARGETS)
    if args.quick:
        names, per_class, targets = ["simplecnn_cifar10", "resnet20_cifar10", "random_resnet20",
                                     "lenet5_mnist"], (5, 3, 5), ["cifar10"]
    cands = zoo_candidates(names, imagenet_size=args.imagenet_size)
    cache = None if args.cache == "none" else Path(args.cache or DEFAULT_CACHE)
    if not args.report_only:
        run_scores(args.out, targets, cands, cache, args.data_root, per_class)
    if (args.out / "zoo_groundtruth.csv").is_file():
        report(args.out, cands, args.pools)
        print((args.out / "zoo_quality.md").read_text())
    else:
        log(f"scores written to {args.out / 'zoo_scores.csv'}; no ground truth there yet, no report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
