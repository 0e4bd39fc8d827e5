r"""The ``recipe=guided`` runner: rank the candidates, fine-tune the picks, compare with the baselines.

The library call is :func:`tguide.select.guided.guided` (a plain function). The recipe (:func:`run`):

1. ranks ``guided.candidates`` on the target's **training split** with
   :func:`tguide.select.rank.rank` (the first of ``guided.metrics`` makes the pick; the
   validation and test images are never scored);
2. fine-tunes, each with the same budget (the ``finetune`` recipe's model, data and trainer
   settings: same epochs, learning rates, batch size) and for every seed of ``guided.seeds``:

   - the ``top_k`` best candidates by that metric, each cut at its best-scoring layer
     (``chosen_by = metric:<name>#<r>``; LEEP/NCE rows, which score the head, use the
     candidate's default layer, its last "auto" layer);
   - the baselines a user could follow instead, at the candidate's default layer:
     ``source_accuracy`` (the candidate with the highest accuracy on its own source task),
     ``random`` (a seeded random candidate) and ``median`` (the candidate of median score);

   a (candidate, layer) chosen twice is fine-tuned once and lists every reason;
3. writes ``guided.csv`` and ``guided.md``: candidate, layer, predicted score, rank by that
   score (1 = best of all candidate × layer rows), realised test accuracy (mean over seeds, and
   per seed), who chose it; plus Spearman ρ and Kendall τ_b between predicted score and realised
   accuracy over the fine-tuned rows when there are at least 3.

Each fine-tune is an ordinary fit run in ``<run>/finetunes/<candidate>__<layer>/seed<S>/``
(config, checkpoints, logger files, ``metrics.json``). It is skipped when its ``metrics.json``
exists, so a killed ``guided`` run resumes where it stopped (pass ``paths.run_dir`` of the
first run, or ``resume=``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tguide.errors import TGuideError

__all__ = ["BASELINE_CHOICES", "Pick", "choose", "guided_table", "markdown", "run"]

BASELINE_CHOICES = ("source_accuracy", "random", "median")
_HEAD_LAYER = "@output"
CSV_COLUMNS = [
    "candidate",
    "spec",
    "layer",
    "metric",
    "predicted_score",
    "rank",
    "test_acc",
    "test_acc_std",
    "test_acc_per_seed",
    "val_acc",
    "source_accuracy",
    "chosen_by",
    "seeds",
    "run_dirs",
]


class Pick(dict):
    """One fine-tune job: ``candidate``, ``spec``, ``layer``, ``score``, ``rank``, ``chosen_by`` (list)."""


def _records(table: Any) -> list[dict[str, Any]]:
    """Rows of ``rank``'s table (a pandas DataFrame, or a list of dicts) as dicts."""
    if hasattr(table, "to_dict"):
        return [dict(r) for r in table.to_dict("records")]
    return [dict(r) for r in table]


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def choose(
    table: Any,
    specs: Mapping[str, str],
    default_layers: Mapping[str, str],
    metric: str,
    *,
    top_k: int = 2,
    baselines: Sequence[str] = ("source_accuracy",),
    seed: int = 0,
    source_accuracy: Mapping[str, float | None] | None = None,
) -> list[Pick]:
    """The fine-tune jobs for a ranking table (see the module doc).

    Args:
        table: :func:`tguide.select.rank.rank`'s rows (``candidate, layer, metric, kind, score``).
        specs: candidate name → spec (what the fine-tune resolves).
        default_layers: candidate name → the layer used for head scores and baselines.
        metric: the metric whose scores pick.
        top_k: how many distinct candidates the metric picks.
        baselines: any of :data:`BASELINE_CHOICES`.
        seed: seeds the ``random`` choice.
        source_accuracy: candidate name → source accuracy (default: the table's
            ``source_accuracy`` rows).
    """
    unknown = [b for b in baselines if b not in BASELINE_CHOICES]
    if unknown:
        raise TGuideError(f"unknown guided.baselines {unknown}; valid: {', '.join(BASELINE_CHOICES)}")
    if top_k < 0:
        raise TGuideError(f"guided.top_k must be ≥ 0, got {top_k}")
    rows = _records(table)
    scored = [r for r in rows if r.get("metric") == metric and _finite(r.get("score"))]
    if not scored:
        raise TGuideError(f"no finite {metric} score in the ranking; pick another guided.metric")
    ordered = sorted(scored, key=lambda r: -float(r["score"]))
    rank_of = {(r["candidate"], r["layer"]): i + 1 for i, r in enumerate(ordered)}

    def layer_of(r: Mapping[str, Any]) -> str:
        return default_layers[r["candidate"]] if r["layer"] in (_HEAD_LAYER, "", None) else str(r["layer"])

    best: dict[str, dict[str, Any]] = {}
    for r in ordered:  # best layer per candidate, candidates in score order
        best.setdefault(r["candidate"], r)
    jobs: dict[tuple[str, str], Pick] = {}

    def add(name: str, layer: str, why: str) -> None:
        key = (name, layer)
        if key not in jobs:
            row = next((r for r in scored if r["candidate"] == name and layer_of(r) == layer), None)
            jobs[key] = Pick(
                candidate=name,
                spec=specs[name],
                layer=layer,
                metric=metric,
                score=float(row["score"]) if row else math.nan,
                rank=rank_of.get((name, row["layer"])) if row else None,
                chosen_by=[],
            )
        jobs[key]["chosen_by"].append(why)

    for i, (name, r) in enumerate(list(best.items())[:top_k]):
        add(name, layer_of(r), f"metric:{metric}#{i + 1}")
    names = list(specs)
    if "source_accuracy" in baselines:
        acc = dict(source_accuracy or {})
        if not acc:
            acc = {r["candidate"]: r["score"] for r in rows if r.get("metric") == "source_accuracy"}
        known = {n: float(a) for n, a in acc.items() if n in specs and _finite(a)}
        if known:
            top = max(known, key=lambda n: known[n])
            add(top, default_layers[top], "baseline:source_accuracy")
    if "random" in baselines and names:
        name = random.Random(int(seed)).choice(sorted(names))
        add(name, default_layers[name], "baseline:random")
    if "median" in baselines and best:
        order = list(best)
        name = order[(len(order) - 1) // 2]
        add(name, layer_of(best[name]), "baseline:median")
    return list(jobs.values())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _finetune_cfg(cfg: Any, pick: Mapping[str, Any], seed: int, run_dir: Path, name: str) -> Any:
    from omegaconf import OmegaConf, open_dict

    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.runner = None
        sub.test_after_fit = True
        sub.seed = int(seed)
        sub.name = name
        sub.paths.run_dir = str(run_dir)
        sub.finetune.candidate = pick["spec"]
        sub.finetune.layer = pick["layer"]
        sub.data.root = OmegaConf.select(cfg, "guided.target") or cfg.data.root
        # a fine-tune killed after its first checkpoint continues from it (tguide.fit's resume=)
        partial = (run_dir / "config.yaml").is_file() and any(run_dir.glob("checkpoints/last*.ckpt"))
        sub.resume = str(run_dir) if partial else None
    return sub


def _run_name(cfg: Any) -> str:
    try:
        return str(cfg.name)
    except Exception:  # noqa: BLE001 - ${hydra:...} outside a Hydra run
        return "guided"


def _finetune_all(cfg: Any, picks: list[Pick], seeds: Sequence[int], out: Path, verbose: bool) -> None:
    from tguide.fit import fit

    base = _run_name(cfg)
    for pick in picks:
        pick["results"] = []
        for s in seeds:
            run_dir = out / "finetunes" / f"{_slug(pick['candidate'])}__{_slug(pick['layer'])}" / f"seed{int(s)}"
            done = run_dir / "metrics.json"
            if not done.is_file():
                if verbose:
                    print(
                        f"guided: fine-tuning {pick['candidate']} at {pick['layer']} (seed {s}, "
                        f"{', '.join(pick['chosen_by'])})",
                        flush=True,
                    )
                fit(_finetune_cfg(cfg, pick, int(s), run_dir, f"{base}/{pick['candidate']}/{pick['layer']}/s{s}"))
            elif verbose:
                print(f"guided: {run_dir} already done; reusing its metrics.json", flush=True)
            metrics = json.loads(done.read_text())
            pick["results"].append(
                {
                    "seed": int(s),
                    "run_dir": str(run_dir),
                    "test_acc": metrics.get("test/acc"),
                    "val_acc": metrics.get("val/acc"),
                }
            )


def guided_table(
    picks: Sequence[Mapping[str, Any]], source_accuracy: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CSV rows (:data:`CSV_COLUMNS`) and the rank agreement of predicted score vs realised accuracy."""
    from tguide.select.correlation import kendall, spearman

    rows = []
    for p in picks:
        accs = [float(r["test_acc"]) for r in p.get("results", []) if _finite(r.get("test_acc"))]
        vals = [float(r["val_acc"]) for r in p.get("results", []) if _finite(r.get("val_acc"))]
        rows.append(
            {
                "candidate": p["candidate"],
                "spec": p["spec"],
                "layer": p["layer"],
                "metric": p["metric"],
                "predicted_score": p["score"],
                "rank": p["rank"] if p["rank"] is not None else "",
                "test_acc": statistics.fmean(accs) if accs else math.nan,
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else math.nan),
                "test_acc_per_seed": ";".join(f"{a:.4f}" for a in accs),
                "val_acc": statistics.fmean(vals) if vals else math.nan,
                "source_accuracy": (source_accuracy or {}).get(p["candidate"], ""),
                "chosen_by": ";".join(p["chosen_by"]),
                "seeds": ";".join(str(r["seed"]) for r in p.get("results", [])),
                "run_dirs": ";".join(r["run_dir"] for r in p.get("results", [])),
            }
        )
    pairs = [
        (r["predicted_score"], r["test_acc"]) for r in rows if _finite(r["predicted_score"]) and _finite(r["test_acc"])
    ]
    agree: dict[str, Any] = {"n": len(pairs), "spearman": math.nan, "kendall": math.nan}
    if len(pairs) >= 3:
        x, y = zip(*pairs)
        agree.update(spearman=spearman(x, y), kendall=kendall(x, y))
    return rows, agree


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(float(x), spec) if _finite(x) else "—"


def markdown(rows: Sequence[Mapping[str, Any]], agree: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """``guided.md``: the settings, the table (best realised accuracy first) and the rank agreement."""
    lines = [
        f"# Guided fine-tuning on {info.get('target')}",
        "",
        f"Ranking metric: **{info.get('metric')}** (on the training split, {info.get('rank_samples')} images); "
        f"top-{info.get('top_k')} picks and baselines {', '.join(info.get('baselines') or []) or 'none'}, "
        f"each fine-tuned with the same budget ({info.get('budget')}), seeds {info.get('seeds')}.",
        "",
        "| candidate | layer | predicted score | rank | test acc (mean) | ± sd | per seed | chosen by |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    order = sorted(rows, key=lambda r: -(float(r["test_acc"]) if _finite(r["test_acc"]) else -math.inf))
    for r in order:
        lines.append(
            f"| {r['candidate']} | {r['layer']} | {_fmt(r['predicted_score'], '.4g')} | {r['rank']} | "
            f"{_fmt(r['test_acc'])} | {_fmt(r['test_acc_std'])} | {r['test_acc_per_seed']} | "
            f"{r['chosen_by'].replace(';', ', ')} |"
        )
    lines.append("")
    if agree["n"] >= 3:
        lines.append(
            f"Predicted score vs realised test accuracy over {agree['n']} fine-tuned rows: "
            f"Spearman ρ = {_fmt(agree['spearman'], '.3f')}, Kendall τ_b = {_fmt(agree['kendall'], '.3f')}."
        )
    else:
        lines.append(f"Rank agreement needs ≥ 3 fine-tuned rows with a score (have {agree['n']}).")
    if info.get("pick_reason"):
        lines += ["", f"Pick: {info['pick_reason']}."]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    tmp.replace(path)


def _train_part(cfg: Any, target: Any) -> Any:
    """The target's training split (TargetData), as the fine-tunes will see it."""
    from omegaconf import OmegaConf

    from tguide.select.target_data import target_datamodule

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("_target_", "candidate", "transform", "root"):
        data_cfg.pop(key, None)
    dm = target_datamodule(target, transform=_identity, **data_cfg)
    if not getattr(dm, "parts", None):
        dm.setup("fit")
    parts = getattr(dm, "parts", None)
    if not parts or "train" not in parts:
        raise TGuideError(f"guided: the data module {type(dm).__name__} exposes no training split (`parts['train']`)")
    return parts["train"]


def _identity(x: Any) -> Any:
    return x


def run(cfg: Any) -> dict[str, Any]:
    """The ``recipe=guided`` runner (see the module doc); returns ``{"rows", "agreement", "picks", "ranking"}``."""
    from tguide.runs import prepare_run
    from tguide.select.candidates import resolve_candidate
    from tguide.select.rank import rank

    gd, out = prepare_run(cfg, "guided", "recipe=guided")
    target = gd.get("target") or cfg.data.get("root")
    if target in (None, ""):
        raise TGuideError("no target: pass guided.target=NAME_OR_FOLDER (or data.root)")
    specs_in = gd.get("candidates") or []
    if isinstance(specs_in, str):
        specs_in = [specs_in]
    if len(specs_in) < 2:
        raise TGuideError("guided.candidates needs at least two candidates to choose from")
    metrics = list(gd.get("metrics") or ["knn"])
    seeds = [int(s) for s in (gd.get("seeds") or [cfg.get("seed", 0)])]
    verbose = bool(gd.get("verbose", True))
    train = _train_part(cfg, target)
    cands = [resolve_candidate(s) for s in specs_in]
    specs = {c.name: s for c, s in zip(cands, specs_in)}
    default_layers = {c.name: (c.layers[-1] if c.layers else None) for c in cands}
    src_acc = {c.name: c.source_accuracy for c in cands}
    layers = gd.get("layers", "auto")
    cache_dir = gd.get("cache_dir") or (Path(str(cfg.paths.output_root)) / "feature_cache")
    if str(cache_dir).lower() in ("none", "false", "off"):
        cache_dir = None
    t0 = time.perf_counter()
    ranking_path = out / "ranking.json"
    ranking = rank(
        cands,
        train,
        layers=layers,
        metrics=metrics,
        baselines=["source_accuracy"],
        max_samples=gd.get("max_samples"),
        cache_dir=cache_dir,
        seed=int(gd.get("rank_seed", 0)),
        device=gd.get("device"),
        progress=verbose,
    )
    table = ranking.table
    records = _records(table)
    ranking_path.write_text(json.dumps(records, indent=1, default=str) + "\n")
    rank_seconds = time.perf_counter() - t0
    del cands  # the fine-tunes resolve their own copies (fresh weights)
    picks = choose(
        table,
        specs,
        default_layers,
        metrics[0],
        top_k=int(gd.get("top_k", 2)),
        baselines=list(gd.get("baselines") or []),
        seed=int(gd.get("baseline_seed", 0)),
        source_accuracy=src_acc,
    )
    _finetune_all(cfg, picks, seeds, out, verbose)
    rows, agree = guided_table(picks, src_acc)
    _write_csv(out / "guided.csv", rows)
    info = {
        "target": target,
        "metric": metrics[0],
        "top_k": int(gd.get("top_k", 2)),
        "baselines": list(gd.get("baselines") or []),
        "seeds": seeds,
        "rank_samples": len(train),
        "budget": f"{cfg.trainer.get('max_epochs')} epochs",
        "rank_seconds": rank_seconds,
        "pick_reason": ranking.pick.reason if ranking.pick is not None else None,
    }
    (out / "guided.md").write_text(markdown(rows, agree, info))
    (out / "guided.json").write_text(
        json.dumps({"info": info, "agreement": agree, "rows": rows}, indent=2, default=str) + "\n"
    )
    if verbose:
        print((out / "guided.md").read_text(), flush=True)
        print(f"tguide.fit: wrote guided.csv, guided.md; run folder {out.resolve()}", flush=True)
    return {"rows": rows, "agreement": agree, "picks": picks, "ranking": ranking}
