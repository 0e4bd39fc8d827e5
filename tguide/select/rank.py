"""Rank source models for a target task: features per candidate and layer, scores, nulls, a pick.

:func:`rank` is the library call; :func:`tguide.select.rank_recipe.run` is the ``recipe=rank``
runner (``python -m tguide.fit recipe=rank rank.candidates=[...] data=image_folder data.root=PATH``);
the scoring of one candidate is :mod:`tguide.select.rank_scoring`.

:func:`rank` returns a :class:`~tguide.select.ranking_result.Ranking` (table, pick, baselines'
picks, warnings, timings) in six steps: resolve the candidates
(:func:`tguide.select.candidates.create_candidate`), check their layers, extract features, score,
add nulls and baselines, pick. The target images go
through the candidate's own transform and network once; the chosen layers are captured with
forward hooks (:func:`tguide.features.extract_features`, pooled per layer) together with the
network's output when it has a head (LEEP and NCE read its softmax). Features are cached on
disk (:mod:`tguide.select.cache`), so a killed ranking resumes where it stopped. Every metric
comes from the one registry (:mod:`tguide.metrics.registry`); pool-normalised scores (NCTI,
ETran) are min-max normalised here across every candidate × layer of the pool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from tguide.errors import TGuideError
from tguide.features import OUTPUT, describe_pool, extract_features, resolve_layers
from tguide.metrics.registry import METRICS, MetricInfo, get_metric
from tguide.select.cache import FeatureCache, cache_key
from tguide.select.candidates import Candidate, resolve_candidates
from tguide.select.distributed import CandidateResult, shard_candidates
from tguide.select.rank_scoring import (
    bootstrap_candidate,
    flag_widths,
    normalise_pools,
    score_candidate,
    source_accuracy_row,
)
from tguide.select.ranking_result import (
    COLUMNS,
    Ranking,
    best_pick,
    mark_ties,
    no_pick_reason,
    table_warnings,
    with_confidence,
)

__all__ = ["BASELINES", "DEFAULT_METRICS", "RankError", "rank"]


DEFAULT_METRICS = (
    "knn",
    "logme",
    "hscore_shrinkage",
    "transrate_comparable",
    "leep",
    "nce",
)  # docs/studies/default_selector.md
BASELINES = ("source_accuracy", "knn", "linear_probe")


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
            raise RankError(
                f"unknown baseline {name!r}; valid: source_accuracy, "
                + ", ".join(n for n, m in METRICS.items() if m.baseline)
            )
    return infos


def _features(
    cand: Candidate,
    target: Any,
    layers: list[str],
    cache: FeatureCache,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[dict[str, Tensor], Tensor, float]:
    """``({layer: (N, D)}, labels, seconds spent extracting)`` from the cache or the network."""
    from torch.utils.data import DataLoader

    digest, transform = target.digest(), repr(cand.transform)
    keys = {
        layer: cache_key(
            cand.fingerprint, layer, describe_pool(cand.pool, layer) if layer != OUTPUT else "logits", transform, digest
        )
        for layer in layers
    }
    found: dict[str, Tensor] = {}
    for layer, key in keys.items():
        entry = cache.load(key)
        if entry is not None and entry["features"].shape[0] == len(target):
            found[layer] = entry["features"]
    missing = [layer for layer in layers if layer not in found]
    seconds = 0.0
    if missing:
        start = time.perf_counter()
        loader = DataLoader(
            target.dataset(cand.transform), batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
        net = cand.network.to(device)
        try:
            fs = extract_features(
                net, loader, missing, pool=cand.pool, device=device, progress=f"{cand.name}" if progress else False
            )
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


def _load_data(target: Any, max_samples: int | None, seed: int, root: Any) -> Any:
    """The target (a subset of ``max_samples``, class-stratified and seeded); two classes at least."""
    from tguide.data.targets import Target, load_target

    if isinstance(target, Target):
        data = target
        if max_samples is not None and max_samples < len(data):
            from tguide.metrics._subset import stratified_subset

            data = data.subset(stratified_subset(data.labels, int(max_samples), seed))
    else:
        data = load_target(target, root=root, max_samples=max_samples, seed=seed)
    if len(set(data.labels.tolist())) < 2:
        raise RankError(f"target {data.name!r} has one class only; a target task needs at least two")
    return data


def _check_candidates(cands: list[Candidate], infos: list[MetricInfo], metrics: list[str]) -> None:
    """Refuse a request no candidate can answer (every metric needs a head the candidate lacks, or source samples)."""
    head_only = all(i.needs_source_probs or i.needs_source_samples for i in infos)
    for cand in cands:
        if head_only and not cand.head and all(i.needs_source_probs for i in infos):
            raise RankError(
                f"candidate {cand.name} has no classifier head, but every requested metric "
                f"({', '.join(metrics)}) needs one; add a feature metric such as logme"
            )
    if all(i.needs_source_samples for i in infos):
        raise RankError(
            "otce_sim compares source and target samples, which ranking does not have; "
            "use a feature metric (logme, hscore_shrinkage, transrate_comparable, ...)"
        )


def _pick(table: Any, metrics: Sequence[str], specs: Mapping[str, str]) -> tuple[Any, list[str]]:
    """The pick by the first metric that can make one (flagged rows never do; a tie at the top is no pick),
    and a note per metric passed over."""
    passed: list[str] = []
    for name in metrics:
        pick = best_pick(table, name, specs)
        if pick is not None:
            if passed:
                pick = replace(pick, reason=f"{'; '.join(passed)}; so {name} picks: {pick.reason}")
            return pick, passed
        passed.append(f"{name} cannot pick ({no_pick_reason(table, name)})")
    return None, passed


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
    bootstrap: int = 100,
    contender_threshold: float = 0.1,
) -> Ranking:
    """Rank ``candidates`` for ``target``: resolve them, check the layers, extract features (through
    the cache), score, add nulls and baselines, pick.

    Args:
        candidates: specs of any registered source (``zoo:NAME``, ``torchvision:ARCH[:WEIGHTS]``,
            ``timm:NAME``, ``ckpt:PATH``, ``file:PATH#ARCH``, see
            :func:`tguide.select.candidates.create_candidate`), :class:`Candidate` objects or modules.
        target: a :class:`~tguide.data.targets.Target`, a named target
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
        bootstrap: paired, class-stratified half-samples of the target (:mod:`tguide.select.bootstrap`,
            seeded by ``seed``) that give each row its re-centred 90% interval (``ci_low``,
            ``ci_high``) and each candidate its P(best) per metric (``p_best``); 0: off. On by
            default (100); it costs tens of times the scoring time (``timings["bootstrap"]``, per
            metric ``timings["bootstrap/NAME"]``), still less than a first feature extraction.
        contender_threshold: the P(best) a candidate needs to be one of the pick's ``contenders``.

    Returns:
        a :class:`~tguide.select.ranking_result.Ranking`: the long table (``candidate, layer,
        metric, kind, score, z, null_mean, null_std, warning, ci_low, ci_high, p_best``), the pick by
        the first metric with its reason and how sure it is, the baselines' picks, the warnings, the
        P(best) of every candidate per metric and the timings (``bootstrap``: seconds of the
        bootstrap, apart from ``score``).
    """
    import pandas as pd

    start = time.perf_counter()
    metrics, baselines = list(metrics), list(baselines)
    if progress == "auto":
        import sys

        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not metrics:
        raise RankError("`metrics` is empty; name at least one, e.g. metrics=['logme']")
    infos = _check_metrics(metrics, baselines)
    data = _load_data(target, max_samples, seed, root)
    cands = resolve_candidates(candidates)
    _check_candidates(cands, infos, metrics)
    plan = {c.name: _layers_for(c, layers) for c in cands}  # all layer names checked before any work
    cache, dev = FeatureCache(cache_dir), _device(device)
    extra = [get_metric(b) for b in baselines if b != "source_accuracy" and b not in metrics]  # scored once
    kwargs = {k: dict(v) for k, v in (metric_kwargs or {}).items()}
    needs_head = any(i.needs_source_probs for i in infos)
    if bootstrap < 0:
        raise RankError(f"`bootstrap` must be ≥ 0 resamples (0: off), got {bootstrap}")
    boot = None
    if bootstrap:
        from tguide.select.bootstrap import Bootstrap

        boot = Bootstrap(data.labels, int(bootstrap), seed)

    def one_candidate(cand: Candidate) -> CandidateResult:  # on its own rank when launched distributed
        rows: list[dict[str, Any]] = []
        pooled: dict[str, list[tuple[int, Any]]] = {}
        timings: dict[str, float] = {}
        want = plan[cand.name] + ([OUTPUT] if needs_head and cand.head and OUTPUT not in plan[cand.name] else [])
        feats, labels, timings[f"extract/{cand.name}"] = _features(
            cand, data, want, cache, dev, batch_size, num_workers, bool(progress)
        )
        t_score = time.perf_counter()
        first = len(rows)
        score_candidate(
            cand, feats, labels, plan[cand.name], [*infos, *extra], int(null or 0), seed, kwargs, pooled, rows
        )
        if "source_accuracy" in baselines:
            rows.append(source_accuracy_row(cand))
        timings[f"score/{cand.name}"] = time.perf_counter() - t_score
        if boot is not None:  # replicates travel with their rows (the features stay on this rank)
            t_boot = time.perf_counter()
            bootstrap_candidate(boot, cand, feats, labels, rows, first, pooled, kwargs)
            for i in range(first, len(rows)):  # local row indices: keyed again after the gather
                if i in boot.rows:
                    rows[i]["_replicates"] = boot.rows.pop(i)
            for name, entries in boot.pooled.items():
                for i, terms in entries:
                    rows[i]["_pool_replicates"] = (name, terms)
            boot.pooled.clear()
            timings[f"resample/{cand.name}"] = time.perf_counter() - t_boot
        return rows, pooled, timings

    rows, pooled, timings = shard_candidates(cands, one_candidate)  # one table, in candidate order, on every rank
    timings["bootstrap"] = sum(v for k, v in timings.items() if k.startswith("resample/"))
    for i, row in enumerate(rows):
        replicates, pool_terms = row.pop("_replicates", None), row.pop("_pool_replicates", None)
        if boot is not None and replicates is not None:
            boot.rows[i] = replicates
        if boot is not None and pool_terms is not None:
            boot.pooled.setdefault(pool_terms[0], []).append((i, pool_terms[1]))
    normalise_pools(pooled, rows)
    flag_widths(rows)
    table = pd.DataFrame(rows, columns=COLUMNS)
    mark_ties(table)
    p_best: dict[str, dict[str, float]] = {}
    if boot is not None:  # the bootstrap's intervals and P(best), pools normalised per replicate
        t_boot = time.perf_counter()
        p_best = boot.finish(table, lambda name: get_metric(name).load_pool()[1])  # type: ignore[index]
        timings["bootstrap"] += time.perf_counter() - t_boot
        timings.update({f"bootstrap/{name}": s for name, s in boot.seconds.items()})
    specs = {c.name: c.spec for c in cands}
    pick, passed = _pick(table, metrics, specs)
    if pick is not None:
        pick = with_confidence(pick, p_best.get(pick.metric, {}), contender_threshold)
    baseline_picks = {
        b: sure
        for b in baselines
        if (sure := with_confidence(best_pick(table, b, specs), p_best.get(b, {}), contender_threshold)) is not None
    }
    notes = table_warnings(table) + (passed if pick else [f"no pick: {'; '.join(passed)}"])
    if boot is not None:
        notes += [f"{name}: no bootstrap interval or P(best) ({why})" for name, why in boot.skipped.items()]
    timings["extract"] = sum(v for k, v in timings.items() if k.startswith("extract/"))
    timings["score"] = sum(v for k, v in timings.items() if k.startswith("score/"))
    timings["total"] = time.perf_counter() - start
    return Ranking(
        table=table,
        pick=pick,
        baseline_picks=baseline_picks,
        warnings=notes,
        timings=timings,
        metrics=metrics,
        target={"name": data.name, "samples": len(data), "classes": len(data.classes)},
        candidates={
            c.name: {
                "spec": c.spec,
                "provenance": c.provenance,
                "num_params": int(c.num_params),
                "head": c.head,
                "source_accuracy": c.source_accuracy,
                "layers": plan[c.name],
            }
            for c in cands
        },
        null=int(null or 0),
        cache={"hits": cache.hits, "misses": cache.misses},
        p_best=p_best,
    )
