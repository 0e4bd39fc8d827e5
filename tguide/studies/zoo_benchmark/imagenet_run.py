"""Run the ImageNet-only benchmark: probes, scores, the fine-tune budget, fine-tunes (all resumable).

    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data nice python -m tguide.studies.zoo_benchmark imagenet
    python -m tguide.studies.zoo_benchmark imagenet --quick --out /tmp/inq        # < 2 min smoke run
    python -m tguide.studies.zoo_benchmark imagenet --report-only                   # tables from the files

Pool: :func:`tguide.studies.zoo_benchmark.imagenet.imagenet_pool`; targets, splits, probe and
fine-tune recipe: the zoo benchmark's (:mod:`.protocol`, :mod:`.groundtruth`). Phases:

1. ``probe``: the linear probe of every (target, member). The 4 ImageNet nets of the mixed
   benchmark read the same pixels there, so their shipped records
   (``zoo_groundtruth_runs.jsonl``) are reused, marked ``reused_from``; one of them is recomputed
   (``probe_check``) to show that the pipeline reproduces it.
2. ``scores``: every score of :data:`~.scoring.SCORES` on the train split in the three setups
   (:func:`~.scoring.score_pair`) for the new members (the 4 reused ones are copied from
   ``zoo_scores.csv``), and the pre-registered ``gbc_pca64``
   (:mod:`tguide.studies.zoo_benchmark.preregistered`) for every member of both pools
   (``imagenet_scores.csv``; the mixed pool's in ``zoo_scores_gbc_pca64.csv``).
3. ``budget``: the fine-tune budget, chosen on validation before the fine-tune ground truth
   (:data:`BUDGET_RULE`).
4. ``finetune``: seed 0 at every lr of the grid at the chosen budget, lr chosen on val; cells in
   :func:`finetune_order` until the process is stopped (the CPU decides how many).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from tguide.data.targets import BENCHMARK_TARGETS, load_target
from tguide.studies.zoo_benchmark.groundtruth import extract_features, finetune, linear_probe
from tguide.studies.zoo_benchmark.groundtruth_run import append_run, base_record, read_runs
from tguide.studies.zoo_benchmark.imagenet import CACHE, CONTROL, imagenet_pool
from tguide.studies.zoo_benchmark.preregistered import gbc_pca_rows
from tguide.studies.zoo_benchmark.protocol import DEFAULT_CACHE, Inputs, Member, Protocol
from tguide.studies.zoo_benchmark.protocol import pool as mixed_pool
from tguide.studies.zoo_benchmark.scoring import FIELDS, score_pair, source_probs

__all__ = ["BUDGETS", "BUDGET_RULE", "REUSED", "choose_budget", "finetune_order", "main"]

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
REUSED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "shufflenetv2_trunk")
CHECK = ("usps", "shufflenetv2_trunk")
BUDGETS = (4, 16)
BUDGET_TARGETS = ("usps",)
BUDGET_MODELS = ("mcunet_in3", "proxyless_w025")
BUDGET_RULE = (
    "Budgets (epochs) 4 and 16 of the benchmark's fine-tune recipe, seed 0, lr from the grid chosen on val; on "
    "usps with MCUNet-in3 and ProxylessNAS x0.25 (the CPU affords no more). The budget is the smallest whose "
    "val accuracy is at least the model's val linear-probe accuracy - 0.15 for every one of those models; if "
    "none is, the largest. Fixed before any fine-tune of the ImageNet pool ran."
)
QUICK_PER_CLASS = (5, 3, 5)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _key(r: dict) -> tuple:
    return (r["kind"], r["target"], r["candidate"], r.get("lr"), r.get("seed"), r.get("epochs"))


def choose_budget(runs: list[dict], budgets: tuple[int, ...], targets: tuple[str, ...], models: tuple[str, ...]) -> int:
    """:data:`BUDGET_RULE` on the ``budget`` records: the smallest budget within 0.15 of every probe on val."""
    probe = {(r["target"], r["candidate"]): r["val_acc"] for r in runs if r["kind"] == "probe"}
    for b in budgets:
        ok = True
        for t in targets:
            for m in models:
                vals = [r["val_acc"] for r in runs if r["kind"] == "budget" and r["epochs"] == b and _tm(r) == (t, m)]
                if not vals or (t, m) not in probe or max(vals) < probe[(t, m)] - 0.15:
                    ok = False
        if ok:
            return b
    return budgets[-1]


def _tm(r: dict) -> tuple[str, str]:
    return r["target"], r["candidate"]


def finetune_order(targets: list[str], members: list[Member], first: tuple[str, ...]) -> list[tuple[str, Member]]:
    """Cells in run order: the budget targets first; in each target the cheap new nets, then the reused ones."""
    order_t = [t for t in first if t in targets] + [t for t in targets if t not in first]
    cheap = [m for m in members if m.name not in REUSED] + [m for m in members if m.name in REUSED]
    return [(t, m) for t in order_t for m in cheap]


def _reuse(out: Path, src: Path, runs: list[dict], done: set, size: int) -> None:
    for r in read_runs(src / "zoo_groundtruth_runs.jsonl"):
        if r["candidate"] in REUSED and r["input_size"] == size and r["kind"] in ("probe", "finetune"):
            rec = dict(r, reused_from="zoo_groundtruth_runs.jsonl")
            if _key(rec) not in done:
                append_run(out, rec)
                runs.append(rec)
                done.add(_key(rec))


def _scores(out: Path, src: Path, targets: list[str], members: list[Member], args: Any, per_class: Any) -> None:
    path, mixed_path = out / "imagenet_scores.csv", out / "zoo_scores_gbc_pca64.csv"
    done: set = set()
    for p in (path, mixed_path):
        if p.is_file():
            with p.open() as fh:
                done |= {(p.name, r["target"], r["candidate"], r["metric"].split(".")[0]) for r in csv.DictReader(fh)}
    shipped = list(csv.DictReader((src / "zoo_scores.csv").open())) if (src / "zoo_scores.csv").is_file() else []
    mixed: list[Member] = []
    if not args.quick and (src / "zoo_groundtruth.csv").is_file():  # the pre-registered mixed pool: its 12 members
        with (src / "zoo_groundtruth.csv").open() as fh:
            mixed_names = {r["candidate"] for r in csv.DictReader(fh)}
        mixed = [m for m in mixed_pool(imagenet_size=args.imagenet_size) if m.name in mixed_names]
    fhs = {}
    for p in (path, mixed_path):
        new = not p.is_file()
        fhs[p.name] = p.open("a", newline="")
        w = csv.DictWriter(fhs[p.name], FIELDS)
        if new:
            w.writeheader()
    writers = {k: csv.DictWriter(v, FIELDS) for k, v in fhs.items()}

    def write(fname: str, t: str, c: str, rows: list[tuple[str, str, float, float]]) -> None:
        for setup, metric, score, sec in rows:
            writers[fname].writerow(
                {"target": t, "candidate": c, "setup": setup, "metric": metric, "score": repr(score), "seconds": sec}
            )
        fhs[fname].flush()

    by_name = {m.name: m for m in members}
    for t in targets:
        target = load_target(t, args.data_root, per_class=per_class)
        # every member of the ImageNet pool, then the mixed pool's others (the ImageNet ones share features)
        jobs = [(m, path.name) for m in members] + [(m, mixed_path.name) for m in mixed if m.entry.source != "imagenet"]
        jobs += [
            (by_name[m.name], mixed_path.name) for m in mixed if m.entry.source == "imagenet" and m.name in by_name
        ]
        feats_cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for m, fname in jobs:
            need_all = fname == path.name and m.name not in REUSED and (fname, t, m.name, "logme") not in done
            need_pca = (fname, t, m.name, "gbc_pca64") not in done
            if fname == path.name and m.name in REUSED and (fname, t, m.name, "logme") not in done:
                copied = [r for r in shipped if r["target"] == t and r["candidate"] == m.name]
                write(
                    fname,
                    t,
                    m.name,
                    [(r["setup"], r["metric"], float(r["score"]), float(r["seconds"])) for r in copied],
                )
            if not (need_all or need_pca):
                continue
            if m.name not in feats_cache:
                # the ImageNet pool's pixels live in its own cache; the mixed pool's others in the default one
                cache_dir = args.cache_dir or (CACHE if m.name in by_name else DEFAULT_CACHE)
                x, y = Inputs({t: target}, cache_dir).get(t, m)["train"]
                t0 = time.perf_counter()
                model = m.build()
                f = extract_features(model, x, m.entry)
                probs = source_probs(model, x, m.entry) if need_all else None
                feats_cache[m.name] = (f, y, probs)
                write(fname, t, m.name, [("full", "extract", float(f.shape[1]), time.perf_counter() - t0)])
            f, y, probs = feats_cache[m.name]
            rows = score_pair(f, y, probs) if need_all else []
            rows += gbc_pca_rows(f, y) if need_pca else []
            write(fname, t, m.name, rows)
            _log(f"scored {t:16s} {m.name:22s} D={f.shape[1]:5d} -> {fname} ({len(rows)} rows)")
    for fh in fhs.values():
        fh.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tguide.studies.zoo_benchmark imagenet", description=__doc__)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--reuse-from", type=Path, default=RESULTS, help="where the mixed benchmark's files are")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--phases", default="probe,scores,budget,finetune")
    ap.add_argument("--imagenet-size", type=int, default=Protocol.imagenet_size)
    ap.add_argument("--quick", action="store_true", help="cifar10 at 5/3/5 per class, 3 members, 1-2 epoch budgets")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    targets = list(args.targets or BENCHMARK_TARGETS)
    members = imagenet_pool(size=args.imagenet_size)
    per_class = None
    budgets: tuple[int, ...] = BUDGETS
    budget_targets: tuple[str, ...] = BUDGET_TARGETS
    budget_models: tuple[str, ...] = BUDGET_MODELS
    protocol = Protocol(imagenet_size=args.imagenet_size, seeds=(0,))
    if args.quick:
        targets, per_class = ["cifar10"], QUICK_PER_CLASS
        members = imagenet_pool(["mobilenetv1_x025", "proxyless_w025", CONTROL], size=args.imagenet_size)
        budgets, budget_targets, budget_models = (1, 2), ("cifar10",), ("proxyless_w025",)
        if args.cache_dir is None:
            args.cache_dir = args.out / "cache"
    phases = set(args.phases.split(","))
    runs_path = args.out / "imagenet_groundtruth_runs.jsonl"
    runs = read_runs(runs_path)
    done = {_key(r) for r in runs}
    if not args.report_only:
        splits = {t: load_target(t, args.data_root, per_class=per_class) for t in targets}
        inputs = Inputs(splits, args.cache_dir or CACHE, log=_log)
        if not args.quick:
            _reuse(runs_path, args.reuse_from, runs, done, args.imagenet_size)

        def record(rec: dict) -> None:
            append_run(runs_path, rec)
            runs.append(rec)
            done.add(_key(rec))

        def probe(t: str, m: Member, kind: str) -> None:
            rec = base_record(kind, t, m, splits[t], lr=None, seed=None, epochs=None)
            if _key(rec) in done:
                return
            t0 = time.perf_counter()
            model = m.build()
            data = inputs.get(t, m)
            feats = {k: (extract_features(model, x, m.entry), y) for k, (x, y) in data.items()}
            pr = linear_probe(feats["train"], feats["val"], feats["test"], splits[t].num_classes, protocol.l2_grid)
            rec.update(test_acc=pr.test_acc, val_acc=pr.val_acc, l2=pr.l2, seconds=time.perf_counter() - t0)
            rec.update(feature_dim=int(feats["train"][0].shape[1]))
            record(rec)
            _log(f"{kind} {t:16s} {m.name:22s} test {pr.test_acc:.4f} val {pr.val_acc:.4f} {rec['seconds']:.1f}s")

        def ft(t: str, m: Member, kind: str, epochs: int, lr: float) -> None:
            rec = base_record(kind, t, m, splits[t], lr=lr, seed=0, epochs=epochs)
            if _key(rec) in done:
                return
            same = [r for r in runs if _key(r) == ("budget",) + _key(rec)[1:]]
            if kind == "finetune" and same:  # the budget run of this very cell
                record(dict(same[-1], kind="finetune"))
                return
            r = finetune(
                m, inputs.get(t, m), splits[t].num_classes, lr, 0, dataclasses.replace(protocol, epochs=epochs)
            )
            rec.update({k: r[k] for k in ("val_acc", "test_acc", "train_loss", "seconds")})
            record(rec)
            _log(
                f"{kind} {t:16s} {m.name:22s} {epochs:3d} ep lr {lr:g}: val {r['val_acc']:.4f} "
                f"test {r['test_acc']:.4f} {r['seconds']:.0f}s"
            )

        if "probe" in phases:
            if not args.quick and CHECK[0] in targets:
                probe(CHECK[0], next(m for m in members if m.name == CHECK[1]), "probe_check")
            for t in targets:
                for m in members:
                    if args.quick or m.name not in REUSED:
                        probe(t, m, "probe")
        if "scores" in phases:
            _scores(args.out, args.reuse_from, targets, members, args, per_class)
        epochs = None
        if "budget" in phases:
            for t in budget_targets:
                for name in budget_models:
                    m = next(x for x in members if x.name == name)
                    for b in budgets:
                        for lr in protocol.lrs:
                            ft(t, m, "budget", b, lr)
            epochs = choose_budget(runs, budgets, budget_targets, budget_models)
            _log(f"budget chosen on val: {epochs} epochs")
        if "finetune" in phases:
            epochs = epochs or choose_budget(runs, budgets, budget_targets, budget_models)
            for t, m in finetune_order(targets, members, budget_targets):
                for lr in protocol.lrs:
                    ft(t, m, "finetune", epochs, lr)
    from tguide.studies.zoo_benchmark.imagenet_report import write_groundtruth

    write_groundtruth(runs, args.out, targets, members, budgets, budget_targets, budget_models)
    if not args.quick and (args.out / "imagenet_scores.csv").is_file():
        from tguide.studies.zoo_benchmark.imagenet_tables import write_quality

        write_quality(args.out, args.reuse_from)
        _log(f"wrote {args.out / 'imagenet_quality.md'}")
    return 0
