"""Rank source models for a target task: features per candidate and layer, scores, nulls, a pick.

:func:`rank` is the library call; :func:`run` is the ``recipe=rank`` runner
(``python -m tguide.fit recipe=rank rank.candidates=[...] data=image_folder data.root=PATH``).

For each candidate (:func:`tguide.select.candidates.resolve_candidate`) the target images go
through the candidate's own transform and network once; the chosen layers are captured with
forward hooks (:func:`tguide.features.extract_features`, pooled per layer) together with the
network's output when it has a head (LEEP and NCE read its softmax). Features are cached on
disk (:mod:`tguide.select.cache`), so a killed ranking resumes where it stopped. Every metric
comes from the one registry (:mod:`tguide.metrics.registry`); pool-normalised scores (NCTI,
ETran) are min-max normalised here across every candidate × layer of the pool.
"""

from __future__ import annotations

import math
import os
import resource
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from tguide.errors import TGuideError
from tguide.features import OUTPUT, describe_pool, extract_features, resolve_layers
from tguide.metrics.registry import METRICS, MetricInfo, get_metric
from tguide.select.cache import FeatureCache, cache_key
from tguide.select.candidates import Candidate, resolve_candidates

__all__ = ["BASELINES", "DEFAULT_METRICS", "RankError", "rank", "run"]

DEFAULT_METRICS = ("logme", "hscore_shrinkage", "transrate_comparable", "leep", "nce")
BASELINES = ("source_accuracy", "knn", "linear_probe")
COLUMNS = ["candidate", "layer", "metric", "kind", "score", "z", "null_mean", "null_std", "warning"]


class RankError(TGuideError):
    """A ranking request that cannot be carried out (bad layer, inapplicable metric, ...)."""


def _device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _layers_for(cand: Candidate, layers: Any) -> list[str]:
    if isinstance(layers, Mapping):
        layers = layers.get(cand.name, "auto")
    if layers is None or layers == "auto" or list(layers) == ["auto"]:
        names = list(cand.layers)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
    try:
        resolve_layers(cand.network, names)
    except ValueError as err:
        raise RankError(f"candidate {cand.name}: {err}") from None
    return names


def _check_metrics(metrics: Sequence[str], baselines: Sequence[str]) -> list[MetricInfo]:
    infos = []
    for name in metrics:
        try:
            infos.append(get_metric(name))
        except KeyError as err:
            raise RankError(str(err.args[0])) from None
    for name in baselines:
        if name != "source_accuracy" and name not in METRICS:
            raise RankError(f"unknown baseline {name!r}; valid: source_accuracy, "
                            + ", ".join(n for n, m in METRICS.items() if m.baseline))
    return infos


def _features(cand: Candidate, target: Any, layers: list[str], cache: FeatureCache, device: torch.device,
              batch_size: int, num_workers: int, progress: bool) -> tuple[dict[str, Tensor], Tensor, float]:
    """``({layer: (N, D)}, labels, seconds spent extracting)`` from the cache or the network."""
    from torch.utils.data import DataLoader

    digest, transform = target.digest(), repr(cand.transform)
    keys = {layer: cache_key(cand.fingerprint, layer, describe_pool(cand.pool, layer) if layer != OUTPUT else "logits",
                             transform, digest) for layer in layers}
    found: dict[str, Tensor] = {}
    for layer, key in keys.items():
        entry = cache.load(key)
        if entry is not None and entry["features"].shape[0] == len(target):
            found[layer] = entry["features"]
    missing = [layer for layer in layers if layer not in found]
    seconds = 0.0
    if missing:
        start = time.perf_counter()
        loader = DataLoader(target.dataset(cand.transform), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers)
        net = cand.network.to(device)
        try:
            fs = extract_features(net, loader, missing, pool=cand.pool, device=device,
                                  progress=f"{cand.name}" if progress else False)
        except ValueError as err:
            raise RankError(f"candidate {cand.name}: {err}") from None
        finally:
            cand.network.to("cpu")
        for layer in missing:
            feats = fs.features[layer].float().cpu()
            cache.save(keys[layer], feats, fs.labels, {"candidate": cand.name, "layer": layer})
            found[layer] = feats
        seconds = time.perf_counter() - start
    return {layer: found[layer] for layer in layers}, target.labels, seconds


def _score(info: MetricInfo, args: tuple[Any, ...], null: int, seed: int,
           kwargs: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """``(score, z, null mean, null std)``; the last three NaN without a null."""
    fn = info.load()
    kw = {**info.default_kwargs, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if null and null > 0 and not info.baseline:
            from tguide.metrics.null import label_shuffle_null

            res = label_shuffle_null(fn, *args, n_perm=int(null), seed=seed, **kw)
            return (float(getattr(res.score, "score", res.score)), float(res.z), float(res.null_mean),
                    float(res.null_std))
        value = fn(*args, **kw)
    return float(getattr(value, "score", value)), math.nan, math.nan, math.nan


def _saturation(info: MetricInfo, feats: Tensor) -> str:
    n, d = feats.shape
    if info.name == "hscore" and d >= n - 1:
        return f"H-score saturated: D={d} ≥ N−1={n - 1} (the covariance is singular); prefer hscore_shrinkage"
    return ""


def rank(
    candidates: Sequence[str | Candidate | torch.nn.Module],
    target: Any,
    layers: str | Sequence[str] | Mapping[str, Sequence[str]] = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    baselines: Sequence[str] = BASELINES,
    null: int = 0,
    max_samples: int | None = 1000,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool | str = "auto",
) -> Any:
    """Rank ``candidates`` for ``target``; a long-format ``pandas.DataFrame``.

    Args:
        candidates: specs (``zoo:NAME``, ``torchvision:ARCH[:WEIGHTS]``, ``timm:NAME``,
            ``ckpt:PATH``, ``file:PATH#ARCH``), :class:`Candidate` objects or modules.
        target: a :class:`~tguide.data.image_folder.TargetData`, a named target
            (``cifar10``, ``office31_webcam``, ...) or an image folder.
        layers: ``"auto"`` (each candidate's stage outputs + penultimate), a list of layer names
            (applied to every candidate), or ``{candidate name: [layers]}``.
        metrics: registry names; the first one makes the pick. Scores of the source head
            (LEEP, NCE) give one row per candidate (layer ``@output``); on a headless
            candidate they give a NaN row with a warning (an error when every requested
            metric needs a head). ``otce_sim`` needs source samples and is not available here.
        baselines: what a user could use instead: ``source_accuracy`` (the candidate's own
            accuracy on its source task), ``knn`` and ``linear_probe`` (registry baselines).
        null: label shuffles per score (0: none); ``z`` is the score's z against that null.
        max_samples: a seeded, class-stratified subset of the target (``None``: all).
        cache_dir: feature cache folder (``None``: no cache).
        seed: seeds the subset and the nulls.
        device: ``None`` = CUDA when available, else CPU.
        metric_kwargs: extra keyword arguments per metric.
        root: data root for named targets.
        progress: a progress bar per candidate while extracting (``"auto"``: when stderr is a
            terminal).

    Returns:
        DataFrame with columns ``candidate, layer, metric, kind ("score"|"baseline"), score, z,
        warning``; ``.attrs["pick"]`` = ``{"candidate", "layer", "metric", "score", "reason"}``
        (best candidate × layer by the first metric), ``.attrs["baseline_picks"]``,
        ``.attrs["timing"]`` (seconds per candidate: extraction, scoring), ``.attrs["target"]``.
    """
    import pandas as pd

    from tguide.data.targets import Target as TargetData
    from tguide.data.targets import load_target

    metrics, baselines = list(metrics), list(baselines)
    if progress == "auto":
        import sys

        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    progress = bool(progress)
    if not metrics:
        raise RankError("`metrics` is empty; name at least one, e.g. metrics=['logme']")
    infos = _check_metrics(metrics, baselines)
    if isinstance(target, TargetData):
        data = target
        if max_samples is not None and max_samples < len(data):
            from tguide.metrics._subset import stratified_subset

            data = data.subset(stratified_subset(data.labels, int(max_samples), seed))
    else:
        data = load_target(target, root=root, max_samples=max_samples, seed=seed)
    if len(set(data.labels.tolist())) < 2:
        raise RankError(f"target {data.name!r} has one class only; a target task needs at least two")
    cands = resolve_candidates(candidates)
    head_only = all(i.needs_source_probs or i.needs_source_samples for i in infos)
    for cand in cands:
        if head_only and not cand.head and all(i.needs_source_probs for i in infos):
            raise RankError(f"candidate {cand.name} has no classifier head, but every requested metric "
                            f"({', '.join(metrics)}) needs one; add a feature metric such as logme")
    if all(i.needs_source_samples for i in infos):
        raise RankError("otce_sim compares source and target samples, which ranking does not have; "
                        "use a feature metric (logme, hscore_shrinkage, transrate_comparable, ...)")
    plan = {c.name: _layers_for(c, layers) for c in cands}  # all layer names checked before any work
    cache = FeatureCache(cache_dir)
    dev = _device(device)
    extra = [get_metric(b) for b in baselines if b != "source_accuracy"]
    kwargs = {k: dict(v) for k, v in (metric_kwargs or {}).items()}
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[tuple[int, Any]]] = {}
    timing: dict[str, dict[str, float]] = {}
    needs_head = any(i.needs_source_probs for i in infos)
    for cand in cands:
        want = plan[cand.name] + ([OUTPUT] if needs_head and cand.head and OUTPUT not in plan[cand.name] else [])
        feats, labels, t_extract = _features(cand, data, want, cache, dev, batch_size, num_workers, progress)
        start = time.perf_counter()
        for info in [*infos, *extra]:
            kind = "baseline" if info.baseline else "score"
            if info.needs_source_samples:
                rows.append(dict(candidate=cand.name, layer="", metric=info.name, kind=kind, score=math.nan,
                                 z=math.nan, warning=f"not applicable: {info.name} needs source samples"))
                continue
            if info.needs_source_probs:
                if not cand.head:
                    rows.append(dict(candidate=cand.name, layer=OUTPUT, metric=info.name, kind=kind, score=math.nan,
                                     z=math.nan, warning=f"not applicable: {info.name} needs a classifier head; "
                                                         f"{cand.name} has none"))
                    continue
                logits = feats[OUTPUT].double()
                if logits.ndim != 2 or logits.shape[1] < 2:
                    rows.append(dict(candidate=cand.name, layer=OUTPUT, metric=info.name, kind=kind, score=math.nan,
                                     z=math.nan, warning=f"not applicable: output shape {tuple(logits.shape)} is not logits"))
                    continue
                targets = [(OUTPUT, info.arguments(labels=labels, source_probs=torch.softmax(logits, dim=1)))]
            else:
                targets = [(layer, info.arguments(feats[layer], labels)) for layer in plan[cand.name]]
            for layer, args in targets:
                warn = _saturation(info, args[0]) if not info.needs_source_probs else ""
                score, z, mu, sd = math.nan, math.nan, math.nan, math.nan
                try:
                    if info.pool_normalised and info.load_pool() is not None:
                        terms_fn, _ = info.load_pool()  # type: ignore[misc]
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            terms = terms_fn(*args, **{**info.default_kwargs, **kwargs.get(info.name, {})})
                        pooled.setdefault(info.name, []).append((len(rows), terms))
                    else:
                        score, z, mu, sd = _score(info, args, null, seed, kwargs.get(info.name, {}))
                except (ValueError, RuntimeError) as err:
                    warn = "; ".join(w for w in (warn, f"failed: {str(err).splitlines()[0]}") if w)
                rows.append(dict(candidate=cand.name, layer=layer, metric=info.name, kind=kind, score=score, z=z,
                                 null_mean=mu, null_std=sd, warning=warn))
        if "source_accuracy" in baselines:
            acc = cand.source_accuracy
            rows.append(dict(candidate=cand.name, layer="", metric="source_accuracy", kind="baseline",
                             score=float(acc) if acc is not None else math.nan, z=math.nan,
                             warning="" if acc is not None else "source accuracy unknown"))
        timing[cand.name] = {"extract_s": t_extract, "score_s": time.perf_counter() - start}
    for name, entries in pooled.items():  # NCTI / ETran: min-max across the whole pool
        _, combine = get_metric(name).load_pool()  # type: ignore[misc]
        scores = combine([t for _, t in entries])
        note = f"pool-normalised over {len(entries)} candidate×layer rows"
        for (i, _), s in zip(entries, scores.tolist()):
            rows[i]["score"] = float(s)
            rows[i]["warning"] = "; ".join(w for w in (rows[i]["warning"], note) if w)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["pick"] = _pick(df, metrics[0])
    df.attrs["baseline_picks"] = {b: _pick(df, b) for b in baselines}
    df.attrs["timing"] = timing
    df.attrs["target"] = {"name": data.name, "samples": len(data), "classes": len(data.classes)}
    df.attrs["metrics"] = metrics
    df.attrs["null"] = int(null or 0)
    df.attrs["cache"] = {"hits": cache.hits, "misses": cache.misses}
    df.attrs["candidates"] = {c.name: {"provenance": c.provenance, "num_params": int(c.num_params), "head": c.head,
                                       "source_accuracy": c.source_accuracy, "layers": plan[c.name]} for c in cands}
    return df


def _pick(df: Any, metric: str) -> dict[str, Any] | None:
    """Best candidate × layer by ``metric`` (higher is better), with a sentence saying why."""
    sub = df[(df.metric == metric) & df.score.notna()]
    if sub.empty:
        return None
    sub = sub.sort_values("score", ascending=False, kind="stable")
    best = sub.iloc[0]
    others = sub[sub.candidate != best.candidate]
    where = f" on layer {best.layer}" if best.layer else ""
    reason = f"highest {metric} ({best.score:.4g}){where}"
    if not others.empty:
        runner = others.iloc[0]
        reason += f"; next best candidate {runner.candidate} scores {runner.score:.4g}"
    if not math.isnan(float(best.z)):
        reason += f"; z = {best.z:.1f} against the label-shuffle null"
    return {"candidate": best.candidate, "layer": best.layer, "metric": metric, "score": float(best.score),
            "reason": reason}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: Any) -> Any:
    """The ``recipe=rank`` runner: rank ``rank.candidates`` on the target and write the reports."""
    from omegaconf import OmegaConf

    from tguide.runs import prepare_run
    from tguide.select.report import write_reports

    rk, run_dir = prepare_run(cfg, "rank", "recipe=rank")
    target = rk.get("target")
    if target in (None, ""):
        data = OmegaConf.to_container(cfg.get("data") or {}, resolve=True) or {}
        target = data.get("root") if isinstance(data, dict) else None
        if target in (None, ""):
            raise RankError("no target: pass rank.target=NAME (cifar10, office31_webcam, mnist_m, usps, mnist) or "
                            "data=image_folder data.root=PATH")
    candidates = rk.get("candidates") or []
    if isinstance(candidates, str):
        candidates = [candidates]
    output_root = Path(str(cfg.paths.output_root))
    cache_dir = rk.get("cache_dir") or (output_root / "feature_cache")
    if str(cache_dir).lower() in ("none", "false", "off"):
        cache_dir = None
    start = time.perf_counter()
    df = rank(candidates, target, layers=rk.get("layers", "auto"), metrics=rk.get("metrics") or DEFAULT_METRICS,
              baselines=rk.get("baselines") if rk.get("baselines") is not None else BASELINES,
              null=int(rk.get("null_perm") or 0), max_samples=rk.get("max_samples"), cache_dir=cache_dir,
              seed=int(rk.get("seed", cfg.get("seed", 0)) or 0), device=rk.get("device"),
              batch_size=int(rk.get("batch_size") or 64), num_workers=int(rk.get("num_workers") or 0),
              metric_kwargs=rk.get("metric_kwargs") or None, root=rk.get("root"),
              progress=rk.get("progress", "auto"))
    df.attrs["seconds"] = time.perf_counter() - start
    df.attrs["peak_rss_mb"] = peak_rss_mb()
    wandb_run = None
    logger_cfg = cfg.get("logger")
    if logger_cfg and "_target_" in logger_cfg and "Wandb" in str(logger_cfg.get("_target_")):
        from hydra.utils import instantiate

        logger = instantiate(logger_cfg)
        wandb_run = logger.experiment
    paths = write_reports(df, run_dir, wandb_run=wandb_run)
    if wandb_run is not None:
        wandb_run.finish()
    print((run_dir / "ranking.md").read_text(), flush=True)
    print(f"tguide.fit: wrote {', '.join(p.name for p in paths)}; run folder {run_dir.resolve()}", flush=True)
    return df
