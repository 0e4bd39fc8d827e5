"""How sure a ranking is: a paired, seeded bootstrap over the target samples.

Every score of a ranking is an estimate from N target samples; a different draw of N images
would give other scores and perhaps another pick. The bootstrap (Efron, "Bootstrap methods:
another look at the jackknife", Annals of Statistics 1979; the percentile interval of Efron and
Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall 1993) estimates that variation
from the sample itself:

1. draw B resamples of the N target indices with replacement, **within each class** (the
   class counts stay those of the target, as the target itself is a class-stratified subset;
   every class keeps enough samples for the scores that need two per class);
2. recompute every (candidate, layer, metric) score on each resample, **the same resamples for
   every candidate** (paired: the candidates are compared on the same images in each
   replicate, so a gap common to all of them does not count as uncertainty);
3. the 90% percentile interval of each row (``ci_low``, ``ci_high``: the 5% and 95% quantiles of
   its B replicate scores) and, per metric, P(best): the fraction of replicates in which a
   candidate, at its best layer within that replicate, has the top score (a tie splits the
   replicate between the tied candidates, so two identical candidates get 0.5 each).

How each score is recomputed (every route equals the functional on the explicitly resampled
rows; tests/select/test_bootstrap.py checks it):

- **statistics-based scores** (:mod:`tguide.metrics.statistics`: H-score, shrinkage H-score,
  LogME, TransRate and its comparable form, GBC without PCA) when N > D: a resample is a vector
  of multiplicities ``w (N,)`` (how often each row was drawn); the weighted moments
  (``n_c = Σ_{i∈c} w_i``, ``mean_c = Σ w_i x_i / n_c``, centred Grams ``(w∘A)ᵀA``, ...) are the
  statistics of the resampled rows, built with one matmul each instead of a gather, and the
  score is its one ``*_from_statistics`` formula. When N ≤ D the statistics keep the rows
  themselves (their N×N route), so the resampled rows are gathered;
- **sample-path scores and baselines** (kNN, linear probe, SFDA, NLEEP, LEEP, NCE, ...): the
  functional on the resampled rows. A row drawn twice is its own nearest neighbour in kNN's
  leave-one-out and may sit on both sides of the linear probe's folds; both baselines are thus
  a little optimistic on every candidate alike (the paired comparison, P(best), is what they
  serve);
- **pool-normalised scores** (NCTI, ETran): each row's raw terms per replicate, normalised
  across the pool within each replicate;
- ``source_accuracy`` reads no target sample: its interval is the point itself and its P(best)
  is 1 for the candidate with the highest one.

A replicate in which a score fails (a degenerate resample) is NaN and left out of that row's
quantiles; a candidate whose every row is NaN in a replicate cannot win it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tguide.metrics.registry import MetricInfo
from tguide.metrics.statistics import ClassGramStatistics, ClassVarianceStatistics, GramStatistics, Statistics

__all__ = ["Bootstrap", "p_best", "percentile_interval", "resample_indices", "weighted_statistics"]

LEVEL = 0.90  # the interval's coverage


def resample_indices(labels: Tensor, replicates: int, seed: int) -> Tensor:
    """``(B, N)`` int64: B class-stratified resamples with replacement of the indices ``0..N-1``.

    Row ``b`` keeps every class's count: the positions of class ``c`` hold indices of class ``c``
    drawn uniformly with replacement. Seeded (a CPU generator: the same on every device)."""
    if replicates < 1:
        raise ValueError(f"`replicates` must be ≥ 1, got {replicates}")
    y = torch.as_tensor(labels).reshape(-1).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty(replicates, y.shape[0], dtype=torch.int64)
    for c in torch.unique(y, sorted=True):
        members = torch.nonzero(y == c).reshape(-1)
        draw = torch.randint(0, members.shape[0], (replicates, members.shape[0]), generator=gen)
        out[:, members] = members[draw]
    return out


def _counts(idx: Tensor, n: int) -> Tensor:
    """Multiplicity of each row in each resample: ``(B, N)`` float64."""
    return torch.zeros(idx.shape[0], n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(idx.shape, dtype=torch.float64)
    )


def _weighted_record(x: Tensor, codes: Tensor, w: Tensor, c: int, keys: Tensor, fields: Sequence[str]) -> dict:
    """The :mod:`tguide.metrics.moments` record of the rows ``x (N, D)`` each counted ``w_i`` times,
    grouped by ``codes (N,)`` in ``0..c-1`` (raw label ``keys (c,)``)."""
    onehot = torch.zeros(c, x.shape[0], dtype=x.dtype).index_put_((codes, torch.arange(x.shape[0])), w)  # (c, N)
    n = onehot.sum(dim=1)
    mean = (onehot @ x) / n[:, None]  # (c, D): one matmul for every class
    rec = {"key": keys[:, None], "n": n, "mean": mean}
    a = x - mean[codes]  # rows centred on their own group's weighted mean
    wa = w[:, None] * a
    if "m2d" in fields:
        rec["m2d"] = onehot @ (a * a)
    if "m2" in fields:
        rec["m2"] = torch.stack([wa[codes == k].T @ a[codes == k] for k in range(c)]) if c > 1 else (wa.T @ a)[None]
    if "t3" in fields:
        sq = (a * a).sum(dim=1)
        rec["t3"] = onehot @ (sq[:, None] * a)
        rec["q4"] = onehot @ (sq * sq)
    return rec


def weighted_statistics(kind: type[Statistics], x: Tensor, labels: Tensor, weights: Tensor) -> Statistics:
    """The statistics ``kind`` (:class:`GramStatistics`, :class:`ClassGramStatistics` or
    :class:`ClassVarianceStatistics`) of the rows of ``x (N, D)`` repeated ``weights (N,)`` times
    (non-negative integers): equal to ``kind.from_samples`` of the repeated rows. Rows are kept
    (the N×N route of the scores) when the repeated sample has at most D rows, as ``from_samples``
    does."""
    x = x.to(torch.float64)
    y = torch.as_tensor(labels).reshape(-1).to(torch.int64)
    w = weights.to(torch.float64)
    total = int(round(float(w.sum())))
    if kind._rows_up_to_d and total <= x.shape[1]:
        idx = torch.repeat_interleave(torch.arange(x.shape[0]), w.round().to(torch.int64))
        return kind(rows=(x[idx], y[idx]))
    keys, codes = torch.unique(y, sorted=True, return_inverse=True)
    records = {}
    for part, fields in kind._parts.items():
        if part == "g":
            records[part] = _weighted_record(x, torch.zeros_like(codes), w, 1, keys[:1] * 0, fields)
        else:
            present = torch.zeros(keys.shape[0], dtype=torch.float64).index_add_(0, codes, w) > 0
            if not bool(present.all()):  # a class drawn zero times is absent, as in from_samples
                keep = present[codes]
                sub = weighted_statistics(kind, x[keep], y[keep], w[keep])
                return sub
            records[part] = _weighted_record(x, codes, w, keys.shape[0], keys, fields)
    return kind(records=records)


_STATISTICS_KWARGS: dict[type[Statistics], set[str] | None] = {
    GramStatistics: None,  # every keyword of the score goes to its *_from_statistics formula
    ClassGramStatistics: None,
    ClassVarianceStatistics: {"gaussian", "min_variance", "reference_code"},  # GBC without PCA
}


def _statistics_route(info: MetricInfo, kwargs: Mapping[str, Any]) -> type[Statistics] | None:
    """The statistics type when the score is exactly ``*_from_statistics(from_samples(x, y))``."""
    kind = info.load_statistics() if info.statistics and not info.needs_source_probs else None
    if kind not in _STATISTICS_KWARGS:
        return None
    allowed = _STATISTICS_KWARGS[kind]
    if allowed is not None and any(k not in allowed for k, v in kwargs.items() if v is not None):
        return None
    return kind


def _quiet(fn: Callable[[Tensor], Any], arg: Tensor) -> float:
    """``fn(arg)`` as a float, warnings silenced; NaN when the score fails on this resample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = fn(arg)
        except (ValueError, RuntimeError):
            return math.nan
    return float(getattr(value, "score", value))


def replicate_scores(info: MetricInfo, args: tuple[Any, ...], idx: Tensor, kwargs: Mapping[str, Any]) -> Tensor:
    """``(B,)`` float64: the score of ``info`` on each resample ``idx (B, N)`` of its arguments
    (``info.arguments(...)``: ``(features, labels)`` or ``(source_probs, labels)``)."""
    kw = {**info.default_kwargs, **kwargs}
    tensors = tuple(torch.as_tensor(a) for a in args)
    n = tensors[-1].shape[0]
    kind = _statistics_route(info, kw)
    if kind is not None and tensors[0].shape[0] > tensors[0].shape[1]:
        x, y, route = tensors[0].to(torch.float64), tensors[-1], kind

        def from_weights(w: Tensor) -> Any:
            return info.from_statistics(weighted_statistics(route, x, y, w), **kwargs)

        return torch.tensor([_quiet(from_weights, w) for w in _counts(idx, n)], dtype=torch.float64)
    fn = info.load()

    def on_rows(r: Tensor) -> Any:
        return fn(*(t[r] for t in tensors), **kw)

    return torch.tensor([_quiet(on_rows, r) for r in idx], dtype=torch.float64)


def replicate_terms(
    terms_fn: Callable[..., Any], args: tuple[Any, ...], idx: Tensor, kwargs: Mapping[str, Any]
) -> list:
    """A pool-normalised score's raw terms on each resample (``None`` where they fail)."""
    tensors = tuple(torch.as_tensor(a) for a in args)
    out = []
    for r in idx:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out.append(terms_fn(*(t[r] for t in tensors), **kwargs))
            except (ValueError, RuntimeError):
                out.append(None)
    return out


def percentile_interval(replicates: Tensor, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of the finite replicates (NaN, NaN when none is finite)."""
    finite = replicates[torch.isfinite(replicates)]
    if finite.numel() == 0:
        return math.nan, math.nan
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(finite.to(torch.float64), q).tolist()
    return float(lo), float(hi)


def p_best(per_candidate: Mapping[str, Tensor]) -> dict[str, float]:
    """P(best) per candidate from ``{candidate: (L, B) replicate scores of its L rows}``.

    Each replicate goes to the candidate with the highest score at its best row (NaN rows
    ignored); a tie splits it equally; a replicate where no candidate is finite counts for none.
    """
    names = list(per_candidate)
    if not names:
        return {}
    best = torch.stack(
        [torch.nan_to_num(v, nan=-math.inf).reshape(-1, v.shape[-1]).max(dim=0).values for v in per_candidate.values()]
    )  # (M, B)
    top = best.max(dim=0).values
    valid = torch.isfinite(top)
    winners = (best == top) & valid
    share = winners.to(torch.float64) / winners.sum(dim=0).clamp_min(1)
    b = best.shape[1]
    return {name: float(share[i].sum()) / b for i, name in enumerate(names)}


@dataclass
class Bootstrap:
    """Collects the replicate scores of a ranking, candidate by candidate, then fills its table.

    ``rows`` maps a table row index to its ``(B,)`` replicate scores; ``pooled`` the rows of a
    pool-normalised score to their per-replicate terms (combined in :meth:`finish`)."""

    labels: Tensor
    replicates: int = 200
    seed: int = 0
    idx: Tensor = field(init=False)
    rows: dict[int, Tensor] = field(default_factory=dict)
    pooled: dict[str, list[tuple[int, list[Any]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idx = resample_indices(self.labels, self.replicates, self.seed)

    def add(self, index: int, info: MetricInfo, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Replicate the score of table row ``index`` (``info`` on ``args``)."""
        kw = {**info.default_kwargs, **kwargs}
        pool = info.load_pool() if info.pool_normalised else None
        if pool is not None:
            self.pooled.setdefault(info.name, []).append((index, replicate_terms(pool[0], args, self.idx, kw)))
        else:
            self.rows[index] = replicate_scores(info, args, self.idx, kwargs)

    def _combine_pools(self, combine_of: Callable[[str], Callable[..., Any]]) -> None:
        for name, entries in self.pooled.items():
            combine = combine_of(name)
            out = torch.full((len(entries), self.replicates), math.nan, dtype=torch.float64)
            for b in range(self.replicates):
                ok = [i for i, (_, terms) in enumerate(entries) if terms[b] is not None]
                if len(ok) < 1:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        scores = combine([entries[i][1][b] for i in ok])
                    except (ValueError, RuntimeError):
                        continue
                out[ok, b] = torch.as_tensor(scores, dtype=torch.float64)
            for i, (index, _) in enumerate(entries):
                self.rows[index] = out[i]

    def finish(self, table: Any, combine_of: Callable[[str], Callable[..., Any]]) -> dict[str, dict[str, float]]:
        """Fill ``ci_low``/``ci_high``/``p_best`` of ``table`` (a DataFrame, in place); returns
        ``{metric: {candidate: P(best)}}``. Rows with a ``flag`` (saturated, degenerate, ...) keep
        their interval but take no part in P(best)."""
        self._combine_pools(combine_of)
        lows, highs = [math.nan] * len(table), [math.nan] * len(table)
        for index, reps in self.rows.items():
            lows[index], highs[index] = percentile_interval(reps)
        fixed = (table.metric == "source_accuracy") & table.score.notna()
        for index in table.index[fixed]:
            lows[index] = highs[index] = float(table.score[index])
        table["ci_low"], table["ci_high"] = lows, highs
        flagged = table["flag"].astype(str).ne("") if "flag" in table else None
        result: dict[str, dict[str, float]] = {}
        for metric in dict.fromkeys(table.metric):
            sub = table[(table.metric == metric) & table.score.notna()]
            if flagged is not None:
                sub = sub[~flagged[sub.index]]
            if sub.empty:
                continue
            if metric == "source_accuracy":
                top = sub.score.max()
                winners = sorted(set(sub.candidate[sub.score == top]))
                result[metric] = {
                    c: (1.0 / len(winners) if c in winners else 0.0) for c in dict.fromkeys(sub.candidate)
                }
                continue
            per: dict[str, list[Tensor]] = {}
            for index, cand in zip(sub.index, sub.candidate):
                if index in self.rows:
                    per.setdefault(str(cand), []).append(self.rows[index])
            if per:
                result[metric] = p_best({c: torch.stack(v) for c, v in per.items()})
        table["p_best"] = [result.get(m, {}).get(str(c), math.nan) for m, c in zip(table.metric, table.candidate)]
        return result
