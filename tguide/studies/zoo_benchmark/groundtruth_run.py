"""Ground truth of the zoo benchmark on the real zoo: linear probe + fine-tuning accuracy.

    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data python -m tguide.studies.zoo_benchmark groundtruth --estimate
    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data nohup \
        python -m tguide.studies.zoo_benchmark groundtruth > gt.log 2>&1 &
    python -m tguide.studies.zoo_benchmark groundtruth --quick --out /tmp/gt_quick  # < 1 min smoke run
    python -m tguide.studies.zoo_benchmark groundtruth --report-only                   # CSV/markdown from the runs file

The protocol (fixed before any transferability score was computed) is
:mod:`tguide.studies.zoo_benchmark.groundtruth`'s, with the splits of :mod:`tguide.data.targets`:
12 candidates (the 11 zoo checkpoints + ``random_resnet20``, a ResNet-20 with seed-0 random
weights) × 5 targets (cifar10, office31_webcam, office31_amazon, mnist_m, usps). ImageNet models
(EfficientNet-Lite0/1/2, ShuffleNetV2 trunk) run at ``--imagenet-size`` px (96); 4 epochs
(see :data:`tguide.studies.zoo_benchmark.protocol.BUDGET_NOTE`).

Phases (each resumable): 1. linear probes of every (target, candidate); 2. fine-tuning at seed 0
for each lr of the grid; 3. seeds 1, 2 at the lr chosen on val. Every finished run appends one
JSON line to ``<out>/zoo_groundtruth_runs.jsonl`` (with its wall time); on restart finished runs
are skipped. At the end (and with ``--report-only``) ``<out>/zoo_groundtruth.csv`` and
``<out>/zoo_groundtruth.md`` are written from whatever the runs file holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from tguide.data.targets import BENCHMARK_TARGETS as TARGETS
from tguide.data.targets import load_target
from tguide.studies.zoo_benchmark.groundtruth import extract_features, finetune, linear_probe
from tguide.studies.zoo_benchmark.protocol import DEFAULT_CACHE, Inputs, Member, Protocol, pool
from tguide.studies.zoo_benchmark.report import choose_lr, write_groundtruth_report

__all__ = ["QUICK_CANDIDATES", "QUICK_PER_CLASS", "append_run", "main", "read_runs", "run_key"]

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
QUICK_CANDIDATES = ("simplecnn_cifar10", "random_resnet20")
QUICK_PER_CLASS = (5, 3, 5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_key(rec: dict) -> tuple:
    return (
        rec["kind"],
        rec["target"],
        rec["candidate"],
        rec.get("lr"),
        rec.get("seed"),
        rec.get("epochs"),
        rec["input_size"],
    )


def read_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the run is redone
                pass
    return out


def append_run(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def base_record(kind: str, target: str, cand: Member, split: Any, **kw: Any) -> dict:
    return {
        "kind": kind,
        "target": target,
        "candidate": cand.name,
        "input_size": cand.entry.input.size,
        "n_train": split.sizes["train"],
        "n_val": split.sizes["val"],
        "n_test": split.sizes["test"],
        **kw,
    }


def estimate(cands: list[Member], splits: dict[str, Any], inputs: Inputs, protocol: Protocol, ref_target: str) -> float:
    """Time one epoch (and the evaluation) of each candidate on ``ref_target``; extrapolate the full grid."""
    total = 0.0
    n_train_all = sum(s.sizes["train"] for s in splits.values())
    n_eval_all = sum(s.sizes["val"] + s.sizes["test"] for s in splits.values())
    n_all = sum(sum(s.sizes.values()) for s in splits.values())
    runs_per_cell = len(protocol.lrs) + len(protocol.seeds) - 1
    ref = splits[ref_target]
    log(f"estimate on {ref_target} ({ref.sizes}); {runs_per_cell} fine-tunes x {protocol.epochs} epochs per cell")
    for c in cands:
        data = inputs.get(ref_target, c)
        r = finetune(c, data, ref.num_classes, protocol.lrs[0], 0, protocol, epochs=1)
        t_epoch = r["epoch_seconds"][0]
        t_eval = r["seconds"] - t_epoch
        per_train = t_epoch / ref.sizes["train"]
        per_eval = t_eval / (ref.sizes["val"] + ref.sizes["test"])
        ft = runs_per_cell * (protocol.epochs * per_train * n_train_all + per_eval * n_eval_all)
        probe = per_eval * n_all + 2.0 * len(splits)
        total += ft + probe
        log(
            f"  {c.name:22s} {c.entry.input.size:4d}px epoch {t_epoch:6.1f}s ({1 / per_train:6.1f} img/s), eval "
            f"{1 / per_eval:7.1f} img/s -> all targets: fine-tune {ft / 60:6.1f} min, probe {probe / 60:5.1f} min"
        )
    log(f"ESTIMATE full grid: {total / 60:.1f} min of one core (excluding input decoding/caching)")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tguide.studies.zoo_benchmark groundtruth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--cache",
        type=str,
        default=None,
        help=f"input cache folder (default {DEFAULT_CACHE}; 'none' disables it; --quick defaults to <out>/cache)",
    )
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--models-root", default=None)
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--candidates", nargs="*", default=None)
    ap.add_argument("--epochs", type=int, default=Protocol.epochs)
    ap.add_argument("--imagenet-size", type=int, default=Protocol.imagenet_size)
    ap.add_argument(
        "--per-class",
        type=int,
        nargs=3,
        default=None,
        help="override every target's per-class train/val/test counts (not for the benchmark)",
    )
    ap.add_argument("--quick", action="store_true", help="2 candidates x cifar10, 5/3/5 per class, 1 epoch, seeds 0,1")
    ap.add_argument("--estimate", action="store_true", help="time one epoch per candidate and extrapolate, then exit")
    ap.add_argument("--estimate-target", default="office31_webcam")
    ap.add_argument("--phases", default="123", help="which phases to run (1 probe, 2 seed-0 lr grid, 3 seeds)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    protocol = Protocol(epochs=args.epochs, imagenet_size=args.imagenet_size)
    targets = list(args.targets or TARGETS)
    names = args.candidates
    per_class = tuple(args.per_class) if args.per_class else None
    if args.quick:
        protocol = dataclasses.replace(protocol, epochs=1, seeds=(0, 1))
        targets = ["cifar10"]
        names = list(QUICK_CANDIDATES)
        per_class = QUICK_PER_CLASS
    cache = args.cache or (str(args.out / "cache") if args.quick else str(DEFAULT_CACHE))
    cache_dir = None if cache.lower() == "none" else Path(cache).expanduser()
    cands = pool(names, imagenet_size=protocol.imagenet_size, root=args.models_root)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "zoo_groundtruth_runs.jsonl"
    runs = read_runs(runs_path)
    note = f" Quick smoke run: per class {per_class}, 1 epoch, seeds 0,1 (NOT the benchmark)." if args.quick else ""
    if args.report_only:
        p = write_groundtruth_report(runs, args.out, targets, cands, protocol, note)
        log(f"wrote {p}")
        return 0

    log(f"protocol: {protocol}")
    log(f"candidates: {[c.name for c in cands]}; targets: {targets}; cache: {cache_dir}; runs: {runs_path}")
    splits = {t: load_target(t, args.data_root, per_class=per_class) for t in targets}
    for t, s in splits.items():
        log(f"target {t}: {s.sizes}, {s.num_classes} classes; {s.description}")
    inputs = Inputs(splits, cache_dir, log=log)
    if args.estimate:
        estimate(
            cands, splits, inputs, protocol, args.estimate_target if args.estimate_target in splits else targets[0]
        )
        return 0

    done = {run_key(r) for r in runs}
    t_start = time.perf_counter()

    def record(rec: dict) -> None:
        append_run(runs_path, rec)
        runs.append(rec)
        done.add(run_key(rec))

    if "1" in args.phases:
        log("phase 1: linear probes")
        for t in targets:
            s = splits[t]
            for c in cands:
                rec = base_record("probe", t, c, s, lr=None, seed=None, epochs=None)
                if run_key(rec) in done:
                    continue
                data = inputs.get(t, c)
                t0 = time.perf_counter()
                model = c.build()
                feats = {k: (extract_features(model, x, c.entry, protocol.eval_batch), y) for k, (x, y) in data.items()}
                pr = linear_probe(feats["train"], feats["val"], feats["test"], s.num_classes, protocol.l2_grid)
                rec.update(
                    test_acc=pr.test_acc,
                    val_acc=pr.val_acc,
                    l2=pr.l2,
                    val_by_l2={f"{k:g}": v for k, v in pr.val_by_l2.items()},
                    feature_dim=int(feats["train"][0].shape[1]),
                    seconds=time.perf_counter() - t0,
                )
                record(rec)
                log(
                    f"probe {t:16s} {c.name:22s} test {pr.test_acc:.4f} (val {pr.val_acc:.4f}, l2 {pr.l2:g}) "
                    f"{rec['seconds']:.1f}s"
                )
        write_groundtruth_report(runs, args.out, targets, cands, protocol, note)

    def ft_run(t: str, c: Member, lr: float, seed: int) -> None:
        s = splits[t]
        rec = base_record("finetune", t, c, s, lr=lr, seed=seed, epochs=protocol.epochs)
        for other in read_runs(runs_path):  # another process on other targets may have run it meanwhile
            if run_key(other) not in done:
                runs.append(other)
                done.add(run_key(other))
        if run_key(rec) in done:
            return
        r = finetune(c, inputs.get(t, c), s.num_classes, lr, seed, protocol)
        rec.update(
            val_acc=r["val_acc"],
            test_acc=r["test_acc"],
            train_loss=r["train_loss"],
            seconds=r["seconds"],
            epoch_seconds=[round(x, 2) for x in r["epoch_seconds"]],
            protocol=dataclasses.asdict(protocol),
        )
        record(rec)
        log(
            f"finetune {t:16s} {c.name:22s} lr {lr:g} seed {seed}: val {r['val_acc']:.4f} test {r['test_acc']:.4f} "
            f"loss {r['train_loss']:.4f} {r['seconds']:.1f}s (elapsed {(time.perf_counter() - t_start) / 60:.1f} min)"
        )

    if "2" in args.phases:
        log("phase 2: fine-tuning, seed 0, lr grid")
        for t in targets:
            for c in cands:
                for lr in protocol.lrs:
                    ft_run(t, c, lr, 0)
            write_groundtruth_report(runs, args.out, targets, cands, protocol, note)
    if "3" in args.phases:
        log("phase 3: fine-tuning, other seeds at the val-chosen lr")
        for t in targets:
            for c in cands:
                best_lr = choose_lr(runs, t, c.name, protocol.lrs, protocol.epochs, c.entry.input.size)
                if best_lr is None:
                    log(f"skip {t} {c.name}: the seed-0 lr grid is incomplete")
                    continue
                for seed in protocol.seeds:
                    ft_run(t, c, best_lr, seed)
            write_groundtruth_report(runs, args.out, targets, cands, protocol, note)
    p = write_groundtruth_report(runs, args.out, targets, cands, protocol, note)
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; wrote {p} and {p.with_suffix('.md')}")
    return 0
