"""Scoring one candidate for :func:`tguide.select.rank.rank`: one row per (layer, metric).

Each row holds the score (or its label-shuffle z with ``null``), the registry's degeneracy check on
the actual features (:mod:`tguide.metrics.degeneracy`: a ``flag`` and a one-line reason), the
source-accuracy baseline, the NCTI/ETran pool normalisation across every candidate × layer, the
width flag of raw TransRate, and the bootstrap replicates of each row
(:mod:`tguide.select.bootstrap`). No formula lives here: every score comes from the one registry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tguide.features import OUTPUT
from tguide.metrics.degeneracy import flag_of, width_reason
from tguide.metrics.registry import METRICS, MetricInfo, get_metric
from tguide.select.candidates import Candidate

__all__ = ["bootstrap_candidate", "flag_widths", "normalise_pools", "score_candidate", "source_accuracy_row"]


def _score(
    info: MetricInfo, args: tuple[Any, ...], null: int, seed: int, kwargs: Mapping[str, Any]
) -> tuple[float, float, float, float]:
    """``(score, z, null mean, null std)``; the last three NaN without a null."""
    fn = info.load()
    kw = {**info.default_kwargs, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if null and null > 0 and not info.baseline:
            from tguide.metrics.null import label_shuffle_null

            res = label_shuffle_null(fn, *args, n_perm=int(null), seed=seed, **kw)
            return (
                float(getattr(res.score, "score", res.score)),
                float(res.z),
                float(res.null_mean),
                float(res.null_std),
            )
        value = fn(*args, **kw)
    return float(getattr(value, "score", value)), math.nan, math.nan, math.nan


def _degeneracy(info: MetricInfo, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The registry's degeneracy check on the actual features (``""`` when fine, unchecked or uncheckable:
    bad input is reported by the score itself)."""
    if info.needs_source_probs or info.needs_source_samples or info.degeneracy is None:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return info.check_degeneracy(args[0], args[-1], **kwargs)
    except (ValueError, RuntimeError):
        return ""


def _row(
    cand: Candidate,
    layer: str,
    info: MetricInfo,
    score: float = math.nan,
    z: float = math.nan,
    mu: float = math.nan,
    sd: float = math.nan,
    warning: str = "",
    flag: str = "",
    width: int = 0,
) -> dict[str, Any]:
    return dict(
        candidate=cand.name,
        layer=layer,
        metric=info.name,
        kind="baseline" if info.baseline else "score",
        score=score,
        z=z,
        null_mean=mu,
        null_std=sd,
        flag=flag,
        warning=warning,
        _width=width,  # the feature width D (0: not a feature score); not a table column
    )


def _head_inputs(
    cand: Candidate, info: MetricInfo, feats: Mapping[str, Tensor], labels: Tensor
) -> tuple[list[tuple[str, tuple[Any, ...]]], dict[str, Any] | None]:
    """``([(OUTPUT, args)], None)`` for a score of the source head, or ``([], NaN row)`` when it does not apply."""
    if not cand.head:
        return [], _row(
            cand, OUTPUT, info, warning=f"not applicable: {info.name} needs a classifier head; {cand.name} has none"
        )
    logits = feats[OUTPUT].double()
    if logits.ndim != 2 or logits.shape[1] < 2:
        return [], _row(cand, OUTPUT, info, warning=f"not applicable: output shape {tuple(logits.shape)} is not logits")
    return [(OUTPUT, info.arguments(labels=labels, source_probs=torch.softmax(logits, dim=1)))], None


def _score_layer(
    cand: Candidate,
    layer: str,
    info: MetricInfo,
    args: tuple[Any, ...],
    null: int,
    seed: int,
    kwargs: Mapping[str, Any],
    pooled: dict[str, list[tuple[int, Any]]],
    index: int,
) -> dict[str, Any]:
    """One row, flagged when the registry's degeneracy check fires on these features; a pool-normalised
    score (NCTI, ETran) leaves its terms in ``pooled`` for later unless flagged (a flagged row never
    enters the pool normalisation and keeps a NaN score)."""
    warn = _degeneracy(info, args, kwargs)
    flag = flag_of(warn)
    width = 0 if info.needs_source_probs else int(args[0].shape[1])
    score, z, mu, sd = math.nan, math.nan, math.nan, math.nan
    try:
        if info.pool_normalised and info.load_pool() is not None:
            if flag:
                return _row(cand, layer, info, warning=f"{warn}; left out of the pool normalisation", flag=flag)
            terms_fn, _ = info.load_pool()  # type: ignore[misc]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                terms = terms_fn(*args, **{**info.default_kwargs, **kwargs})
            pooled.setdefault(info.name, []).append((index, terms))
        else:
            score, z, mu, sd = _score(info, args, null, seed, kwargs)
    except (ValueError, RuntimeError) as err:
        warn = "; ".join(w for w in (warn, f"failed: {str(err).splitlines()[0]}") if w)
    return _row(cand, layer, info, score, z, mu, sd, warn, flag, width)


def score_candidate(
    cand: Candidate,
    feats: Mapping[str, Tensor],
    labels: Tensor,
    layers: list[str],
    infos: list[MetricInfo],
    null: int,
    seed: int,
    kwargs: Mapping[str, Mapping[str, Any]],
    pooled: dict[str, list[tuple[int, Any]]],
    rows: list[dict[str, Any]],
) -> None:
    """Append the rows of every score and registry baseline of one candidate to ``rows``."""
    for info in infos:
        if info.needs_source_samples:
            rows.append(_row(cand, "", info, warning=f"not applicable: {info.name} needs source samples"))
            continue
        if info.needs_source_probs:
            inputs, nan_row = _head_inputs(cand, info, feats, labels)
            if nan_row is not None:
                rows.append(nan_row)
                continue
        else:
            inputs = [(layer, info.arguments(feats[layer], labels)) for layer in layers]
        for layer, args in inputs:
            rows.append(_score_layer(cand, layer, info, args, null, seed, kwargs.get(info.name, {}), pooled, len(rows)))


def source_accuracy_row(cand: Candidate) -> dict[str, Any]:
    acc = cand.source_accuracy
    return dict(
        candidate=cand.name,
        layer="",
        metric="source_accuracy",
        kind="baseline",
        score=float(acc) if acc is not None else math.nan,
        z=math.nan,
        null_mean=math.nan,
        null_std=math.nan,
        flag="",
        warning="" if acc is not None else "source accuracy unknown",
    )


def normalise_pools(pooled: Mapping[str, list[tuple[int, Any]]], rows: list[dict[str, Any]]) -> None:
    """NCTI / ETran: min-max normalise each score's terms across the whole pool of candidate × layer rows."""
    for name, entries in pooled.items():
        _, combine = get_metric(name).load_pool()  # type: ignore[misc]
        scores = combine([t for _, t in entries])
        note = f"pool-normalised over {len(entries)} candidate×layer rows"
        for (i, _), s in zip(entries, scores.tolist()):
            rows[i]["score"] = float(s)
            rows[i]["warning"] = "; ".join(w for w in (rows[i]["warning"], note) if w)


def flag_widths(rows: list[dict[str, Any]]) -> None:
    """A width-dependent score (raw TransRate) over rows of different widths: every such row ``not_comparable``."""
    for name in {r["metric"] for r in rows}:
        info = METRICS.get(name)
        if info is None or not info.width_dependent:
            continue
        mine = [r for r in rows if r["metric"] == name and not r["flag"] and not math.isnan(r["score"])]
        reason = width_reason(name, [r.get("_width", 0) for r in mine], remedy="transrate_comparable")
        for r in mine if reason else []:
            r["flag"] = flag_of(reason)
            r["warning"] = "; ".join(w for w in (r["warning"], reason) if w)


def bootstrap_candidate(
    boot: Any,
    cand: Candidate,
    feats: Mapping[str, Tensor],
    labels: Tensor,
    rows: list[dict[str, Any]],
    start: int,
    pooled: Mapping[str, list[tuple[int, Any]]],
    kwargs: Mapping[str, Mapping[str, Any]],
) -> None:
    """Bootstrap replicates of the rows ``start:`` of one candidate (its scored rows only)."""
    for i in range(start, len(rows)):
        row = rows[i]
        if row["metric"] == "source_accuracy" or row["layer"] == "":
            continue
        info = get_metric(row["metric"])
        in_pool = any(j == i for j, _ in pooled.get(info.name, []))
        if not in_pool and not math.isfinite(row["score"]):
            continue
        if info.needs_source_probs:
            inputs, _ = _head_inputs(cand, info, feats, labels)
            args = inputs[0][1]
        else:
            args = info.arguments(feats[row["layer"]], labels)
        boot.add(i, info, args, kwargs.get(info.name, {}))
