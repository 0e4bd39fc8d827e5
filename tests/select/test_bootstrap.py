"""The half-sample bootstrap of a ranking: replicates against an independent half-sampling, P(best), seeding."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tguide.metrics.functional.hscore import hscore
from tguide.metrics.functional.logme import logme
from tguide.metrics.registry import get_metric
from tguide.select.bootstrap import (
    Bootstrap,
    half_sample_indices,
    p_best,
    recentred_interval,
    replicate_scores,
)
from tguide.select.ranking_result import Pick, with_confidence


def _data(n=90, d=6, c=3, shift=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + shift * torch.nn.functional.one_hot(y, d).double()
    return x, y


def _numpy_half_samples(labels, b, seed):
    """An independent stratified half-sampling: numpy, one explicit loop per replicate and class."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    out = []
    for _ in range(b):
        rows = []
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            rows.extend(rng.choice(members, size=max(len(members) // 2, min(2, len(members))), replace=False))
        out.append(np.sort(rows))
    return np.array(out)


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


def test_half_samples_are_stratified_seeded_and_without_duplicates():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 9 + [3] * 3)
    a, b = half_sample_indices(y, 50, 3), half_sample_indices(y, 50, 3)
    assert torch.equal(a, b) and not torch.equal(a, half_sample_indices(y, 50, 4))
    assert a.shape == (50, 3 + 2 + 4 + 2)  # ⌊n_c/2⌋ per class, at least 2
    for r in a:
        assert len(set(r.tolist())) == r.shape[0]  # no row drawn twice
        counts = torch.bincount(y[r], minlength=4).tolist()
        assert counts == [3, 2, 4, 2]
    assert len({tuple(r.tolist()) for r in a}) > 40  # the half-samples differ
    with pytest.raises(ValueError, match="replicates"):
        half_sample_indices(y, 0, 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("n,d", [(120, 5), (40, 64)])  # the D×D statistics route and the N×N rows route
def test_hscore_and_logme_replicates_match_an_independent_half_sampling(n, d):
    x, y = _data(n=n, d=d)
    idx = half_sample_indices(y, 30, 5)
    ref_idx = _numpy_half_samples(y.numpy(), 30, 5)
    xs, ys = x.numpy(), y.numpy()
    for name, fn in (("hscore", hscore), ("logme", logme)):
        reps = replicate_scores(get_metric(name), (x, y), idx, {})
        ref = np.array([float(fn(torch.from_numpy(xs[r]), torch.from_numpy(ys[r]))) for r in idx.numpy()])
        np.testing.assert_allclose(reps.numpy(), ref, rtol=1e-7, atol=1e-9)
        # the half-sample distribution agrees with that of an independent numpy half-sampling
        other = np.array([float(fn(torch.from_numpy(xs[r]), torch.from_numpy(ys[r]))) for r in ref_idx])
        spread = max(np.std(other), np.std(reps.numpy()))
        assert abs(np.median(reps.numpy()) - np.median(other)) < 4 * spread / math.sqrt(30) + 1e-9
        assert 0.5 < np.std(reps.numpy()) / np.std(other) < 2.0


def test_knn_replicates_from_the_full_distances_match_a_numpy_leave_one_out():
    x, y = _data(n=60, d=5, shift=1.5)
    idx = half_sample_indices(y, 8, 1)
    for kw in ({"k": 5}, {"k": 5, "metric": "euclidean"}, {}):
        reps = replicate_scores(get_metric("knn"), (x, y), idx, kw)
        if kw.get("metric") == "euclidean":
            ref = np.array([float(get_metric("knn")(x[r], y[r], **kw)) for r in idx])
        else:
            ref = np.array([_numpy_knn_loo(x.numpy()[r], y.numpy()[r], kw.get("k", 20)) for r in idx.numpy()])
        np.testing.assert_allclose(reps.numpy(), ref, atol=1e-12)


def test_shrinkage_transrate_gbc_replicates_equal_explicit_rows():
    x, y = _data(n=150, d=6)
    idx = half_sample_indices(y, 6, 2)
    for name in ("hscore_shrinkage", "transrate", "transrate_comparable", "gbc"):
        info = get_metric(name)
        reps = replicate_scores(info, (x, y), idx, {})
        ref = np.array([float(info(x[r], y[r])) for r in idx])
        np.testing.assert_allclose(reps.numpy(), ref, rtol=1e-7, atol=1e-9, err_msg=name)


def test_n_below_d_half_samples_keep_logme_at_its_full_sample_order():
    """N ≤ D: with duplicated rows a bootstrap inflates LogME of the wide candidate; half-samples
    (no duplicates) keep the narrow, better-separated candidate first, as on the full sample."""
    y = torch.arange(60) % 3
    narrow, _ = _data(n=60, d=6, shift=3.0)
    wide = torch.cat([_data(n=60, d=6, shift=0.5)[0], 0.3 * _data(n=60, d=200, shift=0.0, seed=4)[0]], dim=1)
    assert float(logme(narrow, y)) > float(logme(wide, y))
    boot = Bootstrap(y, 40, 0)
    rows = [
        {"candidate": "narrow", "layer": "f", "metric": "logme", "score": float(logme(narrow, y))},
        {"candidate": "wide", "layer": "f", "metric": "logme", "score": float(logme(wide, y))},
    ]
    boot.add(0, get_metric("logme"), (narrow, y), {})
    boot.add(1, get_metric("logme"), (wide, y), {})
    table = pd.DataFrame(rows)
    probs = boot.finish(table, lambda name: None)
    assert probs["logme"]["narrow"] > 0.9
    assert (table.ci_low <= table.score).all() and (table.score <= table.ci_high).all()


def test_p_best_of_identical_candidates_is_one_half_each_and_a_clear_winner_is_one():
    x, y = _data(n=90, d=6, shift=1.0)
    boot = Bootstrap(y, 100, 0)
    assert all(len(set(r.tolist())) == r.shape[0] for r in boot.idx)
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


def test_recentred_interval_is_the_5_and_95_percent_quantiles_shifted_to_the_estimate():
    reps = torch.arange(101, dtype=torch.float64)  # median 50, quantiles 5 and 95
    assert recentred_interval(reps, 50.0) == pytest.approx((5.0, 95.0))
    assert recentred_interval(reps, 10.0) == pytest.approx((-35.0, 55.0))
    assert all(math.isnan(v) for v in recentred_interval(torch.tensor([math.nan]), 1.0))
    assert all(math.isnan(v) for v in recentred_interval(reps, math.nan))


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


def test_linear_probe_is_not_replicated_and_says_why():
    x, y = _data(n=60, d=5)
    boot = Bootstrap(y, 5, 0)
    boot.add(0, get_metric("linear_probe"), (x, y), {})
    table = pd.DataFrame([{"candidate": "a", "layer": "f", "metric": "linear_probe", "score": 0.8}])
    probs = boot.finish(table, lambda name: None)
    assert "linear_probe" in boot.skipped and "interval" in boot.skipped["linear_probe"]
    assert probs == {} and table.ci_low.isna().all() and table.p_best.isna().all()
