"""Ground truth per layer: a linear probe and every score on each "auto" layer of each candidate.

``rank`` recommends a (candidate, layer), but the benchmark's ground truth is taken at the
penultimate layer only. This step measures, on the zoo benchmark's fixed target splits
(:mod:`tguide.studies.zoo_benchmark.protocol`), for every (target, candidate, layer) of the
candidate's "auto" layers (:attr:`tguide.select.zoo.ZooEntry.layers`: stage outputs, then the
penultimate features; average-pooled, :func:`tguide.features.extract_features`):

- the linear-probe ground truth of the benchmark's protocol
  (:func:`tguide.studies.zoo_benchmark.groundtruth.linear_probe`: fit on train, ``l2`` chosen on
  val, test accuracy): ``probe_test_acc``, ``probe_val_acc``, ``probe_l2``;
- on the train split, every score of :data:`SCORES` (registry names), and the width-fair variant
  ``pca64_<score>`` of :data:`PCA_SCORES`: the same score on the features projected onto their
  first :data:`PCA_DIM` principal components (the dimensionality reduction GBC's authors apply,
  Pándy et al., CVPR 2022; fewer dimensions than training samples, so scores that grow with width
  or saturate at ``D ≥ N − 1`` compare layers of different widths on one footing);
- for a candidate with a source head, one ``@output`` row with LEEP and NCE of its logits.

One JSON line per row; a restart skips the rows already written (resumable).
:mod:`tguide.studies.zoo_benchmark.layer_analysis` turns the rows into the tables.

    python -m tguide.studies.zoo_benchmark layers --out bench/results/zoo_layers.jsonl
    python -m tguide.studies.zoo_benchmark layers --report-only     # CSV + tables from the rows
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tguide.data.targets import BENCHMARK_TARGETS, Target, load_target
from tguide.features import OUTPUT, extract_features
from tguide.metrics.registry import get_metric
from tguide.studies.zoo_benchmark.groundtruth import linear_probe
from tguide.studies.zoo_benchmark.protocol import DEFAULT_CACHE, Inputs, Member, Protocol, normalise, pool

__all__ = ["PCA_DIM", "PCA_SCORES", "SCORES", "layer_rows", "main", "pca_project", "read_rows", "run", "score_row"]

SCORES = (
    "logme",
    "hscore",
    "hscore_shrinkage",
    "transrate",
    "transrate_comparable",
    "gbc",
    "sfda",
    "nleep",
    "knn",
    "linear_probe",
)
PCA_SCORES = ("logme", "hscore", "hscore_shrinkage", "gbc", "sfda", "transrate")
PCA_DIM = 64
HEAD_SCORES = ("leep", "nce")


def pca_project(x: Tensor, k: int = PCA_DIM) -> Tensor:
    """``x`` (N, D) centred and projected onto its first ``k`` principal directions, float64 (N, min(D, k))."""
    x = x.double() - x.double().mean(0)
    if x.shape[1] <= k:
        return x
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:k].T


def score_row(features: Tensor, labels: Tensor, names: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """``{prefix+name: score, prefix+name+"_s": seconds}``; a score that fails gets ``None`` and ``_error``."""
    out: dict[str, Any] = {}
    for name in names:
        info = get_metric(name)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = info(features, labels)
            out[prefix + name] = float(getattr(value, "score", value))
        except Exception as err:  # a score that cannot run on these features is recorded, not fatal
            out[prefix + name] = None
            out[prefix + name + "_error"] = str(err)[:200]
        out[prefix + name + "_s"] = round(time.perf_counter() - t0, 4)
    return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (a line cut by a kill is skipped, so its row is redone)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _features(member: Member, data: dict[str, tuple[Tensor, Tensor]], layers: Sequence[str]) -> dict[str, Any]:
    model = member.build()
    out = {}
    for part in ("train", "val", "test"):
        x, y = data[part]
        loader = DataLoader(TensorDataset(normalise(x, member.entry), y), batch_size=Protocol.eval_batch)
        fs = extract_features(model, loader, list(layers), pool="avg")
        out[part] = ({name: fs.features[name].float() for name in layers}, fs.labels)
    return {"model": model, "features": out}


def layer_rows(
    target_name: str, target: Target, member: Member, data: dict[str, tuple[Tensor, Tensor]], done: set[tuple]
) -> Iterable[dict[str, Any]]:
    """The rows of one (target, candidate) not in ``done`` (keys ``(target, candidate, layer)``)."""
    layers = [name for name in member.entry.layers if (target_name, member.name, name) not in done]
    head = bool(member.entry.has_head) and (target_name, member.name, OUTPUT) not in done
    if not layers and not head:
        return
    t0 = time.perf_counter()
    got = _features(member, data, list(member.entry.layers))
    extract_s = round(time.perf_counter() - t0, 2)
    feats, num_classes = got["features"], len(target.classes)
    if head:
        x, y = data["train"]
        with torch.no_grad():
            model = got["model"].eval()
            logits = torch.cat(
                [model(normalise(x[i : i + Protocol.eval_batch], member.entry)) for i in range(0, len(x), 200)]
            )
        probs = torch.softmax(logits.double(), 1)
        row: dict[str, Any] = {
            "target": target_name,
            "candidate": member.name,
            "layer": OUTPUT,
            "dim": int(probs.shape[1]),
            "n_train": int(len(y)),
        }
        for name in HEAD_SCORES:
            info = get_metric(name)
            row[name] = float(info(*info.arguments(labels=y, source_probs=probs)))
        yield row
    for name in layers:
        tr, va, te = ((feats[p][0][name], feats[p][1]) for p in ("train", "val", "test"))
        t1 = time.perf_counter()
        pr = linear_probe(tr, va, te, num_classes)
        row = {
            "target": target_name,
            "candidate": member.name,
            "layer": name,
            "dim": int(tr[0].shape[1]),
            "n_train": int(tr[0].shape[0]),
            "probe_test_acc": pr.test_acc,
            "probe_val_acc": pr.val_acc,
            "probe_l2": pr.l2,
            "probe_s": round(time.perf_counter() - t1, 2),
            "extract_s": extract_s,
        }
        row.update(score_row(tr[0], tr[1], SCORES))
        row.update(score_row(pca_project(tr[0]), tr[1], PCA_SCORES, prefix=f"pca{PCA_DIM}_"))
        yield row


def run(
    out: Path,
    *,
    candidates: Sequence[str] | None = None,
    targets: Sequence[str] = BENCHMARK_TARGETS,
    data_root: str | None = None,
    per_class: tuple[int, int, int] | None = None,
    cache: Path | None = DEFAULT_CACHE,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Append every missing (target, candidate, layer) row to ``out`` (JSONL); returns all its rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["target"], r["candidate"], r["layer"]) for r in read_rows(out)}
    splits = {t: load_target(t, data_root, per_class=per_class) for t in targets}
    inputs = Inputs(splits, cache, log=log)
    members = pool(candidates)
    for t in targets:
        for member in members:
            for row in layer_rows(t, splits[t], member, inputs.get(t, member), done):
                with out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                log(f"{t} {member.name} {row['layer']} dim={row['dim']} probe={row.get('probe_test_acc', '-')}")
    return read_rows(out)


def main(argv: list[str] | None = None) -> int:
    from tguide.studies.zoo_benchmark import layer_analysis

    p = argparse.ArgumentParser(prog="python -m tguide.studies.zoo_benchmark layers", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("zoo_layers.jsonl"), help="rows of this run (JSONL)")
    p.add_argument("--zoo", default="mixed", help="the `zoo` column of this run's rows in the CSV")
    p.add_argument("--rows", nargs="*", default=[], help="more row files merged in the report, as ZOO=PATH.jsonl")
    p.add_argument("--results", type=Path, default=layer_analysis.RESULTS, help="where zoo_layers.{csv,md} go")
    p.add_argument("--candidates", default=None, help="comma-separated zoo names (default: the whole pool)")
    p.add_argument("--targets", default=",".join(BENCHMARK_TARGETS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--per-class", default=None, help="train,val,test per class (smoke runs only)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="input cache folder ('none' disables it)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="tables from the existing rows (the shipped zoo_layers.csv when no row file exists)",
    )
    a = p.parse_args(argv)
    if not a.report_only:
        run(
            a.out,
            candidates=a.candidates.split(",") if a.candidates else None,
            targets=a.targets.split(","),
            data_root=a.data_root,
            per_class=tuple(int(v) for v in a.per_class.split(",")) if a.per_class else None,  # type: ignore[arg-type]
            cache=None if a.cache == "none" else Path(a.cache),
        )
    sources = [(a.zoo, a.out)] + [(spec.split("=", 1)[0], Path(spec.split("=", 1)[-1])) for spec in a.rows]
    rows = [{"zoo": z, **r} for z, path in sources for r in read_rows(Path(path))]
    if not rows and a.report_only:
        rows = layer_analysis.read_csv(a.results / "zoo_layers.csv")
    if not rows:
        raise SystemExit(f"no rows in {[str(p) for _, p in sources]}: run without --report-only first")
    print(layer_analysis.write_report(rows, a.results))
    return 0
