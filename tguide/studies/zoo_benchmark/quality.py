"""Do transferability scores pick the right pretrained model? Scores of the real zoo vs the ground truth.

    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data python -m tguide.studies.zoo_benchmark quality   # score + report
    python -m tguide.studies.zoo_benchmark quality --report-only                                # tables from the CSVs
    python -m tguide.studies.zoo_benchmark quality --quick --out /tmp/zq                        # < 1 min smoke run

Phase 1 (scores, resumable): :func:`tguide.studies.zoo_benchmark.scoring.run_scores`.

Phase 2 (report): reads ``<out>/zoo_groundtruth.csv`` (``python -m tguide.studies.zoo_benchmark
groundtruth``, fixed before any score was computed) and writes ``<out>/zoo_quality.md`` +
``zoo_quality.json``: per target τ_w, Kendall, Pearson, top-1/top-3 hit and relative top accuracy
of every score and baseline; the same over 200 random sub-pools per target (sizes 4..12, the same
pools for every score) with bootstrap 95% intervals and the paired difference to the best
baseline; setup stability; and a leave-one-target-out choice of score (chosen on the other four
targets).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tguide.data.targets import BENCHMARK_TARGETS as TARGETS
from tguide.errors import TGuideError
from tguide.studies.zoo_benchmark.evaluation import (
    agreement,
    bootstrap_ci,
    leave_one_target_out,
    setup_stability,
    subpools,
)
from tguide.studies.zoo_benchmark.protocol import DEFAULT_CACHE, Member
from tguide.studies.zoo_benchmark.protocol import pool as benchmark_pool
from tguide.studies.zoo_benchmark.report import BASELINES, markdown
from tguide.studies.zoo_benchmark.scoring import (
    SCORES,
    SETUPS,
    combo_score,
    pool_score,
    read_scores,
    read_seconds,
    run_scores,
    source_prior,
    with_baselines,
)
from tguide.studies.zoo_benchmark.scoring import _log as log

__all__ = ["QUICK_CANDIDATES", "main", "report"]

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
QUICK_CANDIDATES = ("simplecnn_cifar10", "resnet20_cifar10", "random_resnet20", "lenet5_mnist")


def report(out: Path, candidates: Sequence[Member], n_pools: int = 200) -> dict[str, Any]:
    """`<out>/zoo_quality.json` and `.md` from `zoo_scores.csv` and `zoo_groundtruth.csv` in `out`."""
    gt_path = out / "zoo_groundtruth.csv"
    if not gt_path.is_file():
        raise TGuideError(
            f"no ground truth at {gt_path}: run `python -m tguide.studies.zoo_benchmark groundtruth` first"
        )
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
                    s = (
                        combo_score(m, full, pool)
                        if m != "random"
                        else {
                            c: float(v)
                            for c, v in zip(pool, np.random.default_rng(1000 * ti + pi).permutation(len(pool)))
                        }
                    )
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
        per_tau = {
            m: {t: per_target[m][t]["weighted_tau"] for t in per_target[m]} for m in summary if m not in ("random",)
        }
        chosen = leave_one_target_out(per_tau) if per_tau and len(targets) > 1 else {}
        loto = {t: {"chosen": c, "tau_w": per_tau[c].get(t, float("nan"))} for t, c in chosen.items()}
        result["gt"][gt_name] = {
            "summary": summary,
            "loto": loto,
            "loto_mean_tau_w": float(np.nanmean([v["tau_w"] for v in loto.values()])) if loto else float("nan"),
        }
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tguide.studies.zoo_benchmark quality", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
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
        names, per_class, targets = list(QUICK_CANDIDATES), (5, 3, 5), ["cifar10"]
    cands = benchmark_pool(names, imagenet_size=args.imagenet_size)
    cache = None if args.cache == "none" else Path(args.cache or DEFAULT_CACHE)
    if not args.report_only:
        run_scores(args.out, targets, cands, cache, args.data_root, per_class)
    if (args.out / "zoo_groundtruth.csv").is_file():
        report(args.out, cands, args.pools)
        print((args.out / "zoo_quality.md").read_text())
    else:
        log(f"scores written to {args.out / 'zoo_scores.csv'}; no ground truth there yet, no report")
    return 0
