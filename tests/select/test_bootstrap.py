"""The paired bootstrap of a ranking: replicates against an independent resampling, P(best), seeding."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tguide.metrics.functional.hscore import hscore
from tguide.metrics.functional.logme import logme
from tguide.metrics.registry import get_metric
from tguide.metrics.statistics import ClassGramStatistics, ClassVarianceStatistics, GramStatistics
from tguide.select.bootstrap import (
    Bootstrap,
    p_best,
    percentile_interval,
    replicate_scores,
    resample_indices,
    weighted_statistics,
)
from tguide.select.ranking_result import Pick, with_confidence


def _data(n=90, d=6, c=3, shift=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + shift * torch.nn.functional.one_hot(y, d).double()
    return x, y


def _numpy_resamples(labels, b, seed):
    """An independent stratified resampling: numpy, one explicit loop per replicate and class."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    out = np.empty((b, y.shape[0]), dtype=np.int64)
    for r in range(b):
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            out[r, members] = rng.choice(members, size=members.shape[0], replace=True)
    return out


def _numpy_knn_loo(x, y, k):
    """Leave-one-out cosine kNN accuracy by brute force (majority vote, ties to the nearest)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    correct = 0
    for i in range(x.shape[0]):
        dist = 1.0 - xn @ xn[i]
        dist[i] = np.inf
        nn = np.argsort(dist, kind="stable")[:k]
        votes = {}
        for rank, j in enumerate(nn):
            cnt, first = votes.get(y[j], (0, rank))
            votes[y[j]] = (cnt + 1, min(first, rank))
        top = max(v[0] for v in votes.values())
        pred = min((v[1], c) for c, v in votes.items() if v[0] == top)[1]
        correct += int(pred == y[i])
    return correct / x.shape[0]


def test_resamples_are_stratified_seeded_and_with_replacement():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    a, b = resample_indices(y, 50, 3), resample_indices(y, 50, 3)
    assert torch.equal(a, b) and not torch.equal(a, resample_indices(y, 50, 4))
    assert torch.equal(y[a], y.expand(50, -1))  # every position keeps its class
    assert any(len(set(r.tolist())) < len(y) for r in a)  # drawn with replacement


@pytest.mark.parametrize("kind", [GramStatistics, ClassGramStatistics, ClassVarianceStatistics])
def test_weighted_statistics_equal_the_statistics_of_the_repeated_rows(kind):
    x, y = _data(n=60, d=4)
    w = torch.tensor(np.random.default_rng(0).integers(0, 3, size=60), dtype=torch.float64)
    explicit = kind.from_samples(torch.repeat_interleave(x, w.long(), dim=0), torch.repeat_interleave(y, w.long()))
    weighted = weighted_statistics(kind, x, y, w)
    for part in kind._parts:
        a, b = explicit.part(part), weighted.part(part)
        assert a.keys() == b.keys()
        for f in a:
            torch.testing.assert_close(b[f].to(a[f].dtype), a[f], rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("n,d", [(120, 5), (40, 64)])  # the D×D statistics route and the N×N rows route
def test_hscore_and_logme_replicates_match_an_independent_resampling(n, d):
    x, y = _data(n=n, d=d)
    idx = resample_indices(y, 12, 5)
    ref_idx = _numpy_resamples(y.numpy(), 12, 5)
    for name, fn in (("hscore", hscore), ("logme", logme)):
        reps = replicate_scores(get_metric(name), (x, y), idx, {})
        ref = np.array([float(fn(x[r], y[r])) for r in idx.numpy()])  # explicit rows, one loop
        np.testing.assert_allclose(reps.numpy(), ref, rtol=1e-7, atol=1e-9)
        # the bootstrap distribution agrees with that of an independent numpy resampling
        other = np.array([float(fn(x[r], y[r])) for r in ref_idx])
        assert abs(np.median(reps.numpy()) - np.median(other)) < 3 * np.std(other) / math.sqrt(12) + 0.05 * abs(
            np.median(other)
        )
    assert x.shape[0] == n


def test_knn_replicates_match_a_numpy_leave_one_out_on_the_resampled_rows():
    x, y = _data(n=60, d=5, shift=1.5)
    idx = resample_indices(y, 8, 1)
    reps = replicate_scores(get_metric("knn"), (x, y), idx, {"k": 5})
    ref = np.array([_numpy_knn_loo(x.numpy()[r], y.numpy()[r], 5) for r in idx.numpy()])
    np.testing.assert_allclose(reps.numpy(), ref, atol=1e-12)


def test_shrinkage_transrate_gbc_statistics_route_equals_explicit_rows():
    x, y = _data(n=150, d=6)
    idx = resample_indices(y, 6, 2)
    for name in ("hscore_shrinkage", "transrate", "transrate_comparable", "gbc"):
        info = get_metric(name)
        reps = replicate_scores(info, (x, y), idx, {})
        ref = np.array([float(info(x[r], y[r])) for r in idx])
        np.testing.assert_allclose(reps.numpy(), ref, rtol=1e-7, atol=1e-9, err_msg=name)


def test_p_best_of_identical_candidates_is_one_half_each_and_a_clear_winner_is_one():
    x, y = _data(n=90, d=6, shift=1.0)
    boot = Bootstrap(y, 100, 0)
    info = get_metric("logme")
    twin = replicate_scores(info, (x, y), boot.idx, {})
    probs = p_best({"a": twin[None], "b": twin.clone()[None]})
    assert probs == pytest.approx({"a": 0.5, "b": 0.5})
    strong, _ = _data(n=90, d=6, shift=4.0)
    better = replicate_scores(info, (strong, y), boot.idx, {})
    probs = p_best({"weak": twin[None], "strong": better[None]})
    assert probs["strong"] == pytest.approx(1.0) and probs["weak"] == pytest.approx(0.0)


def test_p_best_takes_each_candidates_best_row_per_replicate():
    a = torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])  # two layers: best per replicate 3, 5, 0
    b = torch.tensor([[1.0, 1.0, 1.0]])
    assert p_best({"a": a, "b": b}) == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert p_best({"a": torch.tensor([[math.nan, 2.0]]), "b": torch.tensor([[1.0, 1.0]])}) == pytest.approx(
        {"a": 0.5, "b": 0.5}
    )


def test_percentile_interval_is_the_5_and_95_percent_quantiles():
    reps = torch.arange(101, dtype=torch.float64)
    assert percentile_interval(reps) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(v) for v in percentile_interval(torch.tensor([math.nan])))


def _table_boot(seed):
    x, y = _data(n=90, d=6, shift=1.0)
    x2 = x + 0.05 * _data(n=90, d=6, seed=9)[0]
    boot = Bootstrap(y, 40, seed)
    rows = []
    for cand, feats in (("a", x), ("b", x2)):
        for metric in ("logme", "knn"):
            boot.add(len(rows), get_metric(metric), (feats, y), {})
            rows.append(
                {"candidate": cand, "layer": "f", "metric": metric, "score": float(get_metric(metric)(feats, y))}
            )
    rows += [
        {"candidate": "a", "layer": "", "metric": "source_accuracy", "score": 0.7},
        {"candidate": "b", "layer": "", "metric": "source_accuracy", "score": 0.9},
    ]
    table = pd.DataFrame(rows)
    return table, boot.finish(table, lambda name: None)


def test_finish_fills_intervals_and_p_best_and_is_seeded():
    table, probs = _table_boot(0)
    again, probs2 = _table_boot(0)
    assert probs == probs2 and table.equals(again)
    scored = table[table.metric != "source_accuracy"]
    assert (scored.ci_low <= scored.ci_high).all() and scored.ci_low.notna().all()
    for metric in ("logme", "knn"):
        assert sum(probs[metric].values()) == pytest.approx(1.0)
    assert probs["source_accuracy"] == {"a": 0.0, "b": 1.0}
    src = table[table.metric == "source_accuracy"]
    assert (src.ci_low == src.score).all() and (src.ci_high == src.score).all()
    other, _ = _table_boot(1)
    assert not other.ci_low.equals(table.ci_low)


def test_pick_confidence_sentences():
    pick = Pick("lite0", "zoo:lite0", "head", "logme", 0.24, "highest logme")
    close = with_confidence(pick, {"lite0": 0.55, "lite1": 0.41, "other": 0.04})
    assert close.contenders == ("lite0", "lite1") and close.p_best == pytest.approx(0.55)
    assert close.confidence == "lite0 or lite1: too close to call, P(best) 0.55 / 0.41 — fine-tune both"
    clear = with_confidence(pick, {"lite0": 0.97, "lite1": 0.03})
    assert clear.contenders == ("lite0",) and clear.confidence == "lite0: clear pick, P(best) 0.97"
    assert with_confidence(pick, {}) is pick
    with pytest.raises(ValueError, match="threshold"):
        with_confidence(pick, {"lite0": 1.0}, threshold=0.0)
