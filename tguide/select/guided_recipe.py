r"""The ``recipe=guided`` runner: a thin wrapper over :func:`tguide.select.guided.guided`.

:func:`run` maps the ``guided`` block of the config to :func:`~tguide.select.guided.guided`'s
arguments and writes its result into the run folder (:func:`tguide.runs.prepare_run`):

1. ``guided`` ranks ``guided.candidates`` on the target's **training split** (the validation and
   test images are never scored) by the first of ``guided.metrics``, with ``guided.layers``,
   ``max_samples``, ``cache_dir``, ``rank_seed``, ``device`` and a paired bootstrap for P(best);
2. it fine-tunes the pick and every contender whose P(best) is at least ``guided.threshold``
   (at most ``guided.top_k`` candidates, ``chosen_by = metric:<name>#<r>``), each at its best
   layer, and the baselines' picks (``source_accuracy`` from the ranking, ``random`` and
   ``median`` by :func:`~tguide.select.guided.choose`), each with the same budget: the
   ``finetune`` recipe's model options, ``data.batch_size``, ``trainer.max_epochs`` and the
   trainer settings, for every seed of ``guided.seeds``; a (candidate, layer) chosen twice is
   fine-tuned once and lists every reason;
3. writes ``guided.csv``, ``guided.md``, ``guided.json``, ``ranking.json`` and the ranking's
   report page (``report.html``, :func:`tguide.select.report.write_report` with the guided rows):
   candidate, layer, predicted score, rank by that score (1 = best of all candidate × layer
   rows), realised test accuracy (mean over seeds, and per seed), who chose it; plus Spearman ρ
   and Kendall τ_b between predicted score and realised accuracy when there are at least 3 rows.

Each fine-tune keeps its best checkpoint and ``metrics.json`` in
``<run>/finetunes/<candidate>__<layer>/seed<S>/``; one whose ``metrics.json`` exists is not run
again, so a killed ``guided`` run resumes where it stopped (pass ``paths.run_dir`` of the first run).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tguide.errors import TGuideError
from tguide.select.guided import BASELINE_CHOICES, GuidedResult, _finite, choose, guided

__all__ = ["BASELINE_CHOICES", "choose", "guided_table", "markdown", "run"]

# the finetune recipe's model options that tguide.select.finetune.finetune takes as keywords
_MODEL_OPTIONS = ("pool", "weight_decay", "freeze_backbone", "freeze_bn", "label_smoothing", "pretune_samples")
# trainer settings that are finetune()'s own (or meaningless for a function without logger)
_TRAINER_OWN = ("_target_", "max_epochs", "callbacks", "logger", "default_root_dir", "enable_checkpointing")
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
    from tguide.runs import config_dict
    from tguide.select.target_data import target_datamodule

    data_cfg = config_dict(cfg.data, resolve=True, what="guided: data")
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


def _picks(result: GuidedResult) -> list[dict[str, Any]]:
    """``guided``'s rows in :func:`guided_table`'s form: roles as ``chosen_by`` (the pick and the
    contenders as ``metric:<name>#<r>``, by P(best)), the seeds' runs as ``results``."""
    picks, r = [], 0
    for row in result.rows:
        chosen = []
        for role in str(row["role"]).split(";"):
            if role in ("pick", "contender"):
                r += 1
                chosen.append(f"metric:{row['metric']}#{r}")
            else:
                chosen.append(role)
        runs = [x for x in result.runs if (x["candidate"], x["layer"]) == (row["candidate"], row["layer"])]
        picks.append(
            {
                "candidate": row["candidate"],
                "spec": row["spec"],
                "layer": row["layer"],
                "metric": row["metric"],
                "score": row["predicted_score"],
                "rank": row["rank"] if row["rank"] != "" else None,
                "chosen_by": chosen,
                "results": runs,
            }
        )
    return picks


def _finetune_options(cfg: Any) -> dict[str, Any]:
    """The ``finetune`` recipe's model, data and trainer settings as :func:`finetune` keywords."""
    from tguide.runs import config_dict

    model: dict[Any, Any] = (
        config_dict(cfg.model, resolve=True, what="guided: model") if cfg.get("model") is not None else {}
    )
    trainer: dict[Any, Any] = (
        config_dict(cfg.trainer, resolve=True, what="guided: trainer") if cfg.get("trainer") is not None else {}
    )
    opts: dict[str, Any] = {k: model[k] for k in _MODEL_OPTIONS if model.get(k) is not None}
    for key, name in (("lr_backbone", "lr"), ("lr_head", "lr_head"), ("pretune", "pretune")):
        if model.get(key) is not None:
            opts[name] = model[key]
    if model.get("pretune") is not None:
        opts["pretune_source"] = model.get("pretune_source")
        opts["pretune_options"] = model.get("pretune_options")
    opts["batch_size"] = int(cfg.data.get("batch_size", 64))
    opts["trainer_options"] = {k: v for k, v in trainer.items() if k not in _TRAINER_OWN and v is not None}
    return opts


def run(cfg: Any) -> dict[str, Any]:
    """The ``recipe=guided`` runner (see the module doc); returns ``{"rows", "agreement", "picks", "ranking"}``."""
    from tguide.runs import prepare_run

    gd, out = prepare_run(cfg, "guided", "recipe=guided")
    target = gd.get("target") or cfg.data.get("root")
    if target in (None, ""):
        raise TGuideError("no target: pass guided.target=NAME_OR_FOLDER (or data.root)")
    specs = gd.get("candidates") or []
    specs = [specs] if isinstance(specs, str) else list(specs)
    if len(specs) < 2:
        raise TGuideError("guided.candidates needs at least two candidates to choose from")
    metrics = list(gd.get("metrics") or ["knn"])
    seeds = [int(s) for s in (gd.get("seeds") or [cfg.get("seed", 0)])]
    baselines = list(gd.get("baselines") or [])
    unknown = [b for b in baselines if b not in BASELINE_CHOICES]
    if unknown:
        raise TGuideError(f"unknown guided.baselines {unknown}; valid: {', '.join(BASELINE_CHOICES)}")
    verbose = bool(gd.get("verbose", True))
    cache_dir = gd.get("cache_dir") or (Path(str(cfg.paths.output_root)) / "feature_cache")
    if str(cache_dir).lower() in ("none", "false", "off"):
        cache_dir = None
    train = _train_part(cfg, target)
    top_k = int(gd.get("top_k", 2))
    epochs = cfg.trainer.get("max_epochs")
    result = guided(
        specs,
        target,
        metric=metrics[0],
        threshold=float(gd.get("threshold", 0.1)),
        max_finetunes=top_k,
        seeds=seeds,
        epochs=int(epochs),
        out_dir=out / "finetunes",
        baselines=baselines,
        baseline_seed=int(gd.get("baseline_seed", 0)),
        rank_target=train,
        rank_options={
            "layers": gd.get("layers", "auto"),
            "max_samples": gd.get("max_samples"),
            "cache_dir": cache_dir,
            "seed": int(gd.get("rank_seed", 0)),
            "device": gd.get("device"),
            "progress": verbose,
            "bootstrap": int(gd.get("bootstrap", 200)),
        },
        finetune_options=_finetune_options(cfg),
    )
    ranking = result.ranking
    (out / "ranking.json").write_text(json.dumps(ranking.table.to_dict("records"), indent=1, default=str) + "\n")
    src_acc = {str(r.candidate): r.score for r in ranking.table[ranking.table.metric == "source_accuracy"].itertuples()}
    picks = _picks(result)
    rows, agree = guided_table(picks, src_acc)
    _write_csv(out / "guided.csv", rows)
    info = {
        "target": target,
        "metric": metrics[0],
        "top_k": top_k,
        "threshold": float(gd.get("threshold", 0.1)),
        "baselines": baselines,
        "seeds": seeds,
        "rank_samples": len(train),
        "budget": f"{epochs} epochs",
        "rank_seconds": ranking.timings.get("total"),
        "pick_reason": ranking.pick.reason if ranking.pick is not None else None,
    }
    (out / "guided.md").write_text(markdown(rows, agree, info))
    (out / "guided.json").write_text(
        json.dumps({"info": info, "agreement": agree, "rows": rows}, indent=2, default=str) + "\n"
    )
    from tguide.select.report import write_report

    write_report(ranking, out, guided=result)
    if verbose:
        print((out / "guided.md").read_text(), flush=True)
        print(f"tguide.fit: wrote guided.csv, guided.md; run folder {out.resolve()}", flush=True)
    return {"rows": rows, "agreement": agree, "picks": picks, "ranking": ranking}
