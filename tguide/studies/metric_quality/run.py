"""Metric-quality benchmark: do transferability scores rank real transfers?

One resumable command::

    TGUIDE_DATA=../shared/data .venv/bin/python -m tguide.studies.metric_quality [--quick] [--out DIR] [--zoo DIR]

Pipeline (each step cached on disk, finished items are never recomputed):

1. zoo: train/load the source models (:mod:`tguide.studies.metric_quality.zoo`, cache ``~/.cache/tguide/zoo``);
2. features: every stage of every source on every target task (train part) + the source's
   logits + held-out source features → ``<out>/cache/features/<source>-<key>__<task>-<key>.pt``;
3. scores: every :data:`scores.SCORES` entry per (source, task, layer) with its time →
   ``<out>/cache/scores/*.json`` (a new registry entry is computed alone on the next run);
4. ground truth: fine-tune (source cut after ``layer`` + new head, every weight trained, Adam,
   ``steps`` minibatches) for every seed → test accuracy, time → ``<out>/cache/finetune/*.json``;
   the penultimate layer for every pair, every stage for the ``--layer-targets``;
5. report: per target Pearson / Spearman / Kendall / weighted τ / top-1 / regret of each score
   against the mean accuracy, OTCE with λ fitted leave-one-target-out, layer-selection
   agreement, score time vs fine-tune time → ``<out>/results.md``, ``results.json``, PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tguide.studies.metric_quality.report import write_report
from tguide.studies.metric_quality.scores import LAYER_FREE, SCORES, PairInputs
from tguide.studies.metric_quality.tasks import DEFAULT_SOURCES, QUICK_SOURCES, TARGETS, Task, target_tasks
from tguide.studies.metric_quality.zoo import SourceSpec, Trunk, Zoo, extract, stages, train_classifier


@dataclasses.dataclass
class Settings:
    """Benchmark size. Defaults ≈ 30 min of one CPU thread; ``quick()`` is the smoke size."""

    targets: tuple[str, ...] = TARGETS
    layer_targets: tuple[str, ...] = ("usps", "cifar10_5to9")
    n_train: int = 600
    n_test: int = 400
    episodes: int = 3
    steps: int = 60
    batch: int = 32
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1)
    split_seed: int = 0

    @staticmethod
    def quick() -> Settings:
        return Settings(
            targets=("usps",), layer_targets=("usps",), n_train=150, n_test=150, episodes=1, steps=8, seeds=(0, 1)
        )

    def task_key(self) -> str:
        return _hash([self.n_train, self.n_test, self.episodes, self.split_seed])

    def ft_key(self) -> str:
        return _hash([self.steps, self.batch, self.lr])


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- steps


def features_for(
    net: torch.nn.Module, spec: SourceSpec, task: Task, zoo: Zoo, out: Path, tkey: str, cached_only: bool = False
) -> dict[str, Any] | None:
    """Cached per (source, task): ``{"target": {layer: (N, D)}, "source": {layer: (M, D)}, ...}``."""
    path = out / "cache" / "features" / f"{spec.name}-{spec.key()}__{task.name.replace('/', '_')}-{tkey}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    if cached_only:
        return None
    from tguide.studies.metric_quality.zoo import source_data

    _, _, xh, yh = source_data(spec, zoo.root)
    tf, logits = extract(net, task.x_train)
    sf, _ = extract(net, xh)
    blob = {"target": tf, "labels": task.y_train, "logits": logits, "source": sf, "source_labels": yh}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return blob


def scores_for(spec: SourceSpec, task: Task, blob: dict[str, Any], out: Path, tkey: str) -> dict[str, dict[str, Any]]:
    """``{layer: {score: {"value", "seconds"}}}``, computing only the missing entries."""
    path = out / "cache" / "scores" / f"{spec.name}-{spec.key()}__{task.name.replace('/', '_')}-{tkey}.json"
    done = _load_json(path)
    changed = False
    for layer in blob["target"]:
        p = PairInputs(
            blob["target"][layer],
            blob["labels"],
            blob["source"][layer],
            blob["source_labels"],
            blob["logits"],
            spec.name,
            task.name,
            layer,
        )
        row = done.setdefault(layer, {})
        for name, fn in SCORES.items():
            if name in row:
                continue
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = float(fn(p))
            except (ValueError, RuntimeError) as err:  # a score undefined on this pair: recorded, not fatal
                value = float("nan")
                log(f"  {name} failed on {spec.name}/{task.name}/{layer}: {err}")
            row[name] = {"value": value, "seconds": time.perf_counter() - start}
            changed = True
    if changed:
        _dump_json(path, done)
    return done


def finetune_for(
    net: torch.nn.Module,
    spec: SourceSpec,
    task: Task,
    layer: str,
    dim: int,
    seed: int,
    st: Settings,
    out: Path,
    tkey: str,
    cached_only: bool = False,
) -> dict[str, float] | None:
    """Test accuracy and seconds of one fine-tuning run (cached)."""
    path = (
        out
        / "cache"
        / "finetune"
        / f"{spec.name}-{spec.key()}__{task.name.replace('/', '_')}-{tkey}__{layer}__s{seed}-{st.ft_key()}.json"
    )
    if path.is_file():
        return _load_json(path)
    if cached_only:
        return None
    torch.manual_seed(seed)
    model = Trunk(copy.deepcopy(net), layer, task.num_classes, dim)
    start = time.perf_counter()
    train_classifier(model, task.x_train, task.y_train, steps=st.steps, lr=st.lr, batch=st.batch, seed=seed)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = float((model(task.x_test).argmax(1) == task.y_test).double().mean())
    res = {"acc": acc, "seconds": seconds}
    _dump_json(path, res)
    return res


def run(
    st: Settings,
    sources: Sequence[SourceSpec],
    out: Path,
    zoo_dir: str | None,
    root: str | None,
    cached_only: bool = False,
) -> dict[str, Any]:
    """The whole pipeline; ``cached_only`` trains and fine-tunes nothing (report from what is cached;
    scores missing for cached features are still computed, they are cheap)."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    zoo = Zoo(zoo_dir, root)
    tkey = st.task_key()
    t0 = time.perf_counter()
    nets = {}
    for spec in sources:
        if cached_only and not zoo.has(spec):
            log(f"zoo {spec.name}: not cached, skipped (--report-only)")
            continue
        net, meta = zoo.get(spec)
        nets[spec.name] = (spec, net, meta)
        log(f"zoo {spec.name}: held-out acc {meta['held_out_acc']:.3f}, trained in {meta['train_seconds']:.1f}s")
    t_zoo = time.perf_counter() - t0
    records: list[dict[str, Any]] = []  # one per (source, task, layer, seed)
    score_rows: list[dict[str, Any]] = []  # one per (source, task, layer, score)
    for target in st.targets:
        tasks = target_tasks(target, root, st.n_train, st.n_test, st.episodes, seed=st.split_seed)
        for spec, net, _ in nets.values():
            names = [n for n, _ in stages(net)]
            layers = names if target in st.layer_targets else names[-1:]
            for task in tasks:
                blob = features_for(net, spec, task, zoo, out, tkey, cached_only)
                if blob is None:
                    continue
                sc = scores_for(spec, task, blob, out, tkey)
                for layer, row in sc.items():
                    for name, v in row.items():
                        if name not in SCORES:  # cached from an earlier registry: kept on disk, not reported
                            continue
                        score_rows.append(
                            {
                                "source": spec.name,
                                "target": target,
                                "task": task.name,
                                "layer": layer,
                                "penultimate": layer == names[-1],
                                "score": name,
                                **v,
                            }
                        )
                for layer in layers:
                    dim = blob["target"][layer].shape[1]
                    for seed in st.seeds:
                        r = finetune_for(net, spec, task, layer, dim, seed, st, out, tkey, cached_only)
                        if r is None:
                            continue
                        records.append(
                            {
                                "source": spec.name,
                                "target": target,
                                "task": task.name,
                                "layer": layer,
                                "penultimate": layer == names[-1],
                                "seed": seed,
                                **r,
                            }
                        )
            log(f"  {target} <- {spec.name}: done ({time.perf_counter() - t0:.0f}s so far)")
        log(f"target {target}: done ({time.perf_counter() - t0:.0f}s so far)")
    zoo_meta = {n: {"arch": s.arch, "width": s.width, "data": s.data, **m} for n, (s, _, m) in nets.items()}
    result = write_report(
        records,
        score_rows,
        zoo_meta,
        out,
        settings=dataclasses.asdict(st),
        layer_free=sorted(LAYER_FREE),
        zoo_seconds=t_zoo,
        total_seconds=time.perf_counter() - t0,
    )
    log(f"done in {time.perf_counter() - t0:.0f}s; report: {out / 'results.md'}")
    return result


def log_wandb(result: dict[str, Any], out: Path) -> None:
    """One W&B run (offline unless ``WANDB_MODE``/an account says otherwise): summary table, per-target rows, plots."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project="tguide-quality", dir=str(out), config=result["settings"], job_type="quality_bench")
    cols = [
        "score",
        "mean_pearson",
        "mean_spearman",
        "mean_kendall",
        "mean_weighted_tau",
        "top1",
        "regret",
        "seconds",
        "speedup",
    ]
    table = wandb.Table(columns=cols)  # type: ignore[arg-type]  # wandb types columns as an invariant list[str | int]
    for name, sm in result["summary"].items():
        table.add_data(
            name,
            sm["pearson"],
            sm["spearman"],
            sm["kendall"],
            sm["weighted_tau"],
            sm["top1"],
            sm["regret"],
            sm["seconds"],
            sm["speedup"],
        )
    rows = wandb.Table(columns=["target", "score", "pearson", "spearman", "kendall", "weighted_tau", "top1", "regret"])
    for target, by_score in result["per_target"].items():
        for name, r in by_score.items():
            rows.add_data(
                target, name, r["pearson"], r["spearman"], r["kendall"], r["weighted_tau"], r["top1"], r["regret"]
            )
    run.log(
        {
            "summary": table,
            "per_target": rows,
            "scatter": wandb.Image(str(out / "scatter.png")),
            "weighted_tau": wandb.Image(str(out / "weighted_tau.png")),
        }
    )
    run.finish()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tguide.studies.metric_quality", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 sources × 1 target (usps), tiny budgets: the smoke test")
    ap.add_argument("--out", default=None, help="output folder (default outputs/bench/quality[_quick])")
    ap.add_argument("--zoo", default=None, help="zoo cache folder (default $TGUIDE_ZOO or ~/.cache/tguide/zoo)")
    ap.add_argument("--root", default=None, help="data root (default $TGUIDE_DATA)")
    ap.add_argument("--targets", nargs="*", default=None, help=f"subset of {TARGETS}")
    ap.add_argument("--seeds", type=int, default=None, help="number of fine-tuning seeds")
    ap.add_argument("--report-only", action="store_true", help="train and fine-tune nothing: report what is cached")
    ap.add_argument(
        "--extra-scores",
        nargs="*",
        default=(),
        metavar="FILE.py",
        help="Python files that add entries to scores.SCORES with @register (e.g. calibrated scores)",
    )
    ap.add_argument(
        "--wandb", action="store_true", help="also log the tables and plots to W&B (offline unless configured)"
    )
    args = ap.parse_args(argv)
    st = Settings.quick() if args.quick else Settings()
    if args.targets:
        unknown = sorted(set(args.targets) - set(TARGETS))
        if unknown:
            ap.error(f"unknown targets {unknown}; choose from {TARGETS}")
        st.targets = tuple(args.targets)
    if args.seeds:
        st.seeds = tuple(range(args.seeds))
    out = Path(args.out) if args.out else Path("outputs/bench") / ("quality_quick" if args.quick else "quality")
    for k, extra in enumerate(args.extra_scores):
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"quality_extra_scores_{k}", extra)
        if spec is None or spec.loader is None:
            ap.error(f"--extra-scores: cannot import {extra!r}")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    result = run(st, QUICK_SOURCES if args.quick else DEFAULT_SOURCES, out, args.zoo, args.root, args.report_only)
    if args.wandb:
        log_wandb(result, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
