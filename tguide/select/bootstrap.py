"""How sure a ranking is: paired, class-stratified half-sampling of the target samples.

Every score of a ranking is an estimate from N target samples; another draw of N images would
give other scores and perhaps another pick. This module estimates that variation by
**subsampling** (Politis and Romano, "Large sample confidence regions based on subsamples under
minimal assumptions", Annals of Statistics 1994; the half-sample variant goes back to McCarthy,
"Pseudo-replication: half samples", Review of the International Statistical Institute 1969):

1. draw B half-samples of the target **without replacement, within each class**: class ``c``
   with ``n_c`` samples keeps ``m_c = max(⌊n_c/2⌋, min(2, n_c))`` of them (two per class at
   least, for the scores that need a within-class spread), so ``m = Σ m_c ≈ N/2``;
2. recompute every (candidate, layer, metric) score on each half-sample, **the same
   half-samples for every candidate** (paired: a gap common to all candidates is no
   uncertainty about which one is best);
3. per row, the **re-centred 90% percentile interval**

   .. math:: \\big[\\hat\\theta + q_{0.05} - \\operatorname{med},\\;
             \\hat\\theta + q_{0.95} - \\operatorname{med}\\big]

   with :math:`\\hat\\theta` the full-sample score and :math:`q_\\alpha`, med the quantiles and
   median of its B half-sample scores; per metric, **P(best)**: the fraction of half-samples in
   which a candidate, at its best layer within that half-sample, has the top re-centred score
   :math:`\\hat\\theta + \\theta^*_b - \\operatorname{med}` (a tie splits the half-sample, so two
   identical candidates get 0.5 each).

Why half-samples: for a smooth statistic of a sample of size m drawn without replacement from
the N target rows, :math:`\\operatorname{Var} \\approx \\frac{\\sigma^2}{m}\\big(1 - \\frac mN\\big)`,
which at m = N/2 equals :math:`\\sigma^2/N`, the variance of the full-sample estimate: the spread
of the half-sample scores needs no rescaling. No row is ever duplicated, so every replicate is
a valid target for every score (a bootstrap with replacement duplicates rows, which inflates
N ≤ D scores such as LogME and lets leave-one-out kNN find a sample's own copy). Why re-centre:
scores such as LogME, H-score or kNN accuracy change with the sample size itself, so the
half-sample scores sit around θ(N/2), not θ(N); shifting them by ``θ̂ − med`` keeps their
spread and removes that first-order shift, per row (per candidate), before the interval and
before P(best).

What the interval is: the sampling spread of the score at this target size, from this target's
own samples, for every candidate alike. What it is not: a guarantee of 90% coverage (the score
need not be smooth, e.g. kNN accuracy moves in steps of 1/m; the shift is corrected to first
order only; m ≈ N/2 sits at the edge of the subsampling theory, which asks m/N → 0), nor any
statement about the fine-tuned accuracy the score is meant to predict. An interval of a bounded
score (an accuracy) may reach past its bounds.

How each score is recomputed: the functional on the half-sample's rows (the statistics-based
scores thus take their D×D or N×N route on the m rows, as for any target of m samples), except
kNN, whose pairwise distances are computed once on the N rows and sliced per half-sample (the
same neighbours and vote as :func:`tguide.metrics.functional.knn.knn_accuracy` on those rows;
tests/select/test_bootstrap.py checks it). Pool-normalised scores (NCTI, ETran): each row's raw
terms per half-sample, normalised across the pool within each half-sample. ``source_accuracy``
reads no target sample: its interval is the point itself and its P(best) is 1 for the candidate
with the highest one. The linear probe is not replicated (:data:`NOT_REPLICATED` says why; its
interval and P(best) stay NaN and the ranking says so). A half-sample on which a score fails is
NaN and left out of that row's quantiles; a candidate whose every row is NaN in a half-sample cannot win it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tguide.metrics.registry import MetricInfo

__all__ = ["Bootstrap", "half_sample_indices", "p_best", "recentred_interval", "replicate_scores"]

LEVEL = 0.90  # the interval's coverage
MIN_PER_CLASS = 2  # the scores with a within-class spread need two samples of each class
NOT_REPLICATED = {
    "linear_probe": "its 5-fold ridge refit costs ~0.1 s per half-sample at D = 1280, about a quarter of the "
    "bootstrap's time on a 4-candidate ranking; its interval and P(best) are left out",
}  # metric → why its half-sample scores are not computed (``ci_low``/``ci_high``/``p_best`` stay NaN)


def half_sample_indices(labels: Tensor, replicates: int, seed: int, min_per_class: int = MIN_PER_CLASS) -> Tensor:
    """``(B, m)`` int64: B class-stratified half-samples without replacement of ``0..N-1``.

    Class ``c`` (``n_c`` samples) keeps ``max(⌊n_c/2⌋, min(min_per_class, n_c))`` of its rows in
    every half-sample, drawn uniformly without replacement; each row is sorted. Seeded (a CPU
    generator: the same on every device)."""
    if replicates < 1:
        raise ValueError(f"`replicates` must be ≥ 1, got {replicates}")
    y = torch.as_tensor(labels).reshape(-1).cpu()
    if y.numel() == 0:
        raise ValueError("`labels` is empty: the target has no samples to half-sample")
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for c in torch.unique(y, sorted=True):
        members = torch.nonzero(y == c).reshape(-1)
        n_c = members.shape[0]
        keep = max(n_c // 2, min(int(min_per_class), n_c))
        order = torch.rand(replicates, n_c, generator=gen).argsort(dim=1)[:, :keep]  # a random subset per row
        parts.append(members[order])
    return torch.cat(parts, dim=1).sort(dim=1).values


def _quiet(fn: Callable[[Tensor], Any], arg: Tensor) -> float:
    """``fn(arg)`` as a float, warnings silenced; NaN when the score fails on this half-sample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = fn(arg)
        except (ValueError, RuntimeError):
            return math.nan
    return float(getattr(value, "score", value))


_KNN_KWARGS = {"k", "metric", "chunk_size"}


def _knn_replicates(x: Tensor, labels: Tensor, idx: Tensor, k: int, metric: str) -> Tensor:
    """Leave-one-out kNN accuracy on each half-sample ``idx (B, m)`` from the N×N distances
    computed once: the rule of :func:`~tguide.metrics.functional.knn.knn_accuracy` (k nearest
    other rows, majority vote, a tie to the class with the nearest neighbour)."""
    from tguide.metrics._validate import check_features, check_labels

    x = check_features(x, "features").to(torch.float64)
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    if metric == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        dist = 1.0 - xn @ xn.T  # (N, N)
    else:
        xc = x - x.mean(dim=0, keepdim=True)
        sq = (xc * xc).sum(dim=1)
        dist = sq[:, None] + sq[None, :] - 2.0 * xc @ xc.T
    idx = idx.to(x.device)
    m = idx.shape[1]
    kk = min(int(k), m - 1)
    out = torch.full((idx.shape[0],), math.nan, dtype=torch.float64)
    if kk < 1:
        return out
    arange_k = torch.arange(kk, device=x.device)
    eye = torch.eye(m, dtype=torch.bool, device=x.device)
    for b, r in enumerate(idx):
        y = codes[r]
        if int(torch.unique(y).numel()) < 2:
            continue
        sub = dist[r][:, r].masked_fill(eye, torch.inf)  # (m, m), the query itself left out
        nn_lab = y[torch.topk(sub, kk, dim=1, largest=False, sorted=True).indices]  # (m, k) nearest first
        votes = torch.zeros(m, c, dtype=torch.int64, device=x.device).scatter_add_(1, nn_lab, torch.ones_like(nn_lab))
        first = torch.full((m, c), kk, dtype=torch.int64, device=x.device).scatter_reduce_(
            1, nn_lab, arange_k.expand(m, kk), reduce="amin"
        )
        tied = votes == votes.max(dim=1, keepdim=True).values
        pred = torch.where(tied, first, torch.full_like(first, kk + 1)).argmin(dim=1)
        out[b] = float((pred == y).to(torch.float64).mean())
    return out


def replicate_scores(info: MetricInfo, args: tuple[Any, ...], idx: Tensor, kwargs: Mapping[str, Any]) -> Tensor:
    """``(B,)`` float64: the score of ``info`` on each half-sample ``idx (B, m)`` of its arguments
    (``info.arguments(...)``: ``(features, labels)`` or ``(source_probs, labels)``)."""
    kw = {**info.default_kwargs, **kwargs}
    tensors = tuple(torch.as_tensor(a) for a in args)
    if info.name == "knn" and set(kw) <= _KNN_KWARGS and kw.get("metric", "cosine") in ("cosine", "euclidean"):
        return _knn_replicates(tensors[0], tensors[-1], idx, int(kw.get("k", 20)), str(kw.get("metric", "cosine")))
    fn = info.load()

    def on_rows(r: Tensor) -> Any:
        return fn(*(t[r] for t in tensors), **kw)

    return torch.tensor([_quiet(on_rows, r) for r in idx], dtype=torch.float64)


def replicate_terms(
    terms_fn: Callable[..., Any], args: tuple[Any, ...], idx: Tensor, kwargs: Mapping[str, Any]
) -> list[Any]:
    """A pool-normalised score's raw terms on each half-sample (``None`` where they fail)."""
    tensors = tuple(torch.as_tensor(a) for a in args)
    out: list[Any] = []
    for r in idx:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out.append(terms_fn(*(t[r] for t in tensors), **kwargs))
            except (ValueError, RuntimeError):
                out.append(None)
    return out


def recentred(replicates: Tensor, estimate: float) -> Tensor:
    """The replicates shifted so that their median is the full-sample ``estimate``:
    ``θ̂ + θ*_b − median(θ*)`` (NaN replicates stay NaN; all NaN when ``estimate`` is not finite)."""
    finite = replicates[torch.isfinite(replicates)]
    if finite.numel() == 0 or not math.isfinite(estimate):
        return torch.full_like(replicates, math.nan, dtype=torch.float64)
    return replicates.to(torch.float64) + (estimate - float(finite.to(torch.float64).quantile(0.5)))


def recentred_interval(replicates: Tensor, estimate: float, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of the finite replicates re-centred on ``estimate``:
    ``(θ̂ + q_{(1-level)/2} − med, θ̂ + q_{(1+level)/2} − med)``; (NaN, NaN) when no replicate
    is finite or the estimate is not."""
    shifted = recentred(replicates, estimate)
    finite = shifted[torch.isfinite(shifted)]
    if finite.numel() == 0:
        return math.nan, math.nan
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(finite, q).tolist()
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
    """Collects the half-sample scores of a ranking, candidate by candidate, then fills its table.

    ``rows`` maps a table row index to its ``(B,)`` half-sample scores; ``pooled`` the rows of a
    pool-normalised score to their per-half-sample terms (combined in :meth:`finish`);
    ``seconds`` the time spent per metric."""

    labels: Tensor
    replicates: int = 100
    seed: int = 0
    idx: Tensor = field(init=False)
    rows: dict[int, Tensor] = field(default_factory=dict)
    pooled: dict[str, list[tuple[int, list[Any]]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idx = half_sample_indices(self.labels, self.replicates, self.seed)

    def add(self, index: int, info: MetricInfo, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Replicate the score of table row ``index`` (``info`` on ``args``); a metric of
        :data:`NOT_REPLICATED` is only noted in ``skipped`` with its reason."""
        if info.name in NOT_REPLICATED:
            self.skipped[info.name] = NOT_REPLICATED[info.name]
            return
        start = time.perf_counter()
        kw = {**info.default_kwargs, **kwargs}
        pool = info.load_pool() if info.pool_normalised else None
        if pool is not None:
            self.pooled.setdefault(info.name, []).append((index, replicate_terms(pool[0], args, self.idx, kw)))
        else:
            self.rows[index] = replicate_scores(info, args, self.idx, kwargs)
        self.seconds[info.name] = self.seconds.get(info.name, 0.0) + time.perf_counter() - start

    def _combine_pools(self, combine_of: Callable[[str], Callable[..., Any]]) -> None:
        for name, entries in self.pooled.items():
            combine = combine_of(name)
            out = torch.full((len(entries), self.replicates), math.nan, dtype=torch.float64)
            for b in range(self.replicates):
                ok = [i for i, (_, terms) in enumerate(entries) if terms[b] is not None]
                if not ok:
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
        ``{metric: {candidate: P(best)}}``. Both use each row's half-sample scores re-centred on
        its full-sample ``score``. Rows with a ``flag`` (saturated, degenerate, ...) keep their
        interval but take no part in P(best)."""
        self._combine_pools(combine_of)
        lows, highs = [math.nan] * len(table), [math.nan] * len(table)
        centred: dict[int, Tensor] = {}
        for index, reps in self.rows.items():
            estimate = float(table.score[index])
            centred[index] = recentred(reps, estimate)
            lows[index], highs[index] = recentred_interval(reps, estimate)
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
                if index in centred:
                    per.setdefault(str(cand), []).append(centred[index])
            if per:
                result[metric] = p_best({c: torch.stack(v) for c, v in per.items()})
        table["p_best"] = [result.get(m, {}).get(str(c), math.nan) for m, c in zip(table.metric, table.candidate)]
        return result
