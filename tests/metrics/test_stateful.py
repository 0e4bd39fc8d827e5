"""The torchmetrics classes: batches in pieces = the functional on all data; reset; reservoir."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import leep, nce
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.otce import otce
from tguide.metrics.stateful import GBC, LEEP, NCE, OTCE, FeatureMetric, HScore, HScoreShrinkage, LogME, TransRate
from tguide.metrics.functional.transrate import transrate

SPLITS = [0, 7, 8, 31, 60]  # uneven batches (one of a single row) of 60 samples


def pieces(*arrays: np.ndarray):
    for lo, hi in zip(SPLITS[:-1], SPLITS[1:]):
        yield tuple(a[lo:hi] for a in arrays)


@pytest.fixture
def data(rng, make_data):
    x, y = make_data(rng, 60, 5, 3)
    logits = rng.normal(size=(60, 4)) + 2.0 * np.eye(4)[y % 4]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return x, y, probs


@pytest.mark.parametrize(
    "cls,fn,kwargs",
    [
        (HScore, hscore, {}),
        (HScoreShrinkage, hscore_shrinkage, {}),
        (TransRate, lambda f, y: transrate(f, y, eps=1e-2), {"eps": 1e-2}),
        (LogME, logme, {}),
    ],
)
def test_feature_metrics_match_the_functional(data, cls, fn, kwargs):
    x, y, _ = data
    m = cls(**kwargs)
    for xb, yb in pieces(x, y):
        m.update(torch.tensor(xb), torch.tensor(yb))
    expected = fn(x, y)
    got = m.compute()
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(float(expected), rel=1e-10, abs=1e-12)


def test_leep_and_nce_match_the_functional(data):
    x, y, probs = data
    m_leep, m_nce = LEEP(), NCE()
    for pb, yb in pieces(probs, y):
        m_leep.update(pb, yb)  # numpy batches are accepted
        m_nce.update(pb.argmax(1), torch.tensor(yb))
    assert float(m_leep.compute()) == pytest.approx(float(leep(probs, y)), rel=1e-10)
    assert float(m_nce.compute()) == pytest.approx(float(nce(probs.argmax(1), y)), rel=1e-10)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_otce_matches_the_functional(rng, solver):
    xs, ys = rng.normal(size=(30, 4)), np.arange(30) % 3
    xt, yt = rng.normal(size=(20, 4)) + 0.3, np.arange(20) % 2
    m = OTCE(solver=solver, weights=(0.1, -1.0, 0.5))
    # interleave the domains, in uneven batches
    m.update(xt[:5], yt[:5], domain="target")
    m.update(xs[:11], ys[:11], domain="source")
    m.update(xt[5:], yt[5:], domain="target")
    m.update(xs[11:], ys[11:], domain="source")
    ref = otce(xs, ys, xt, yt, solver=solver, weights=(0.1, -1.0, 0.5))
    assert float(m.compute()) == pytest.approx(float(ref.score), rel=1e-10)
    full = m.compute_result()
    assert float(full.task_distance) == pytest.approx(float(ref.task_distance), rel=1e-10)
    assert float(full.domain_distance) == pytest.approx(float(ref.domain_distance), rel=1e-10)
    assert full.coupling.shape == (30, 20)


def test_forward_only_updates(data):
    x, y, _ = data
    m = HScore()
    for xb, yb in pieces(x, y):
        assert m(torch.tensor(xb), torch.tensor(yb)) is None
    assert float(m.compute()) == pytest.approx(float(hscore(x, y)), rel=1e-10)


def test_declared_direction_matches_behaviour():
    """``higher_is_better`` is what a ranking trusts: informative inputs must score higher than the
    same inputs with shuffled labels, batch by batch (two updates) as in training."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(400) % 4
    f = torch.randn(400, 6, generator=g, dtype=torch.float64) + 2.0 * torch.nn.functional.one_hot(y, 6)
    shuffled = y[torch.randperm(400, generator=g)]
    probs = torch.softmax(3.0 * torch.nn.functional.one_hot(y, 5).double() + torch.randn(400, 5, generator=g,
                                                                                          dtype=torch.float64), 1)

    def run(cls, first, labels):
        m = cls()
        m.update(first[:150], labels[:150])
        m.update(first[150:], labels[150:])
        return float(m.compute())

    for cls, first in ((HScore, f), (HScoreShrinkage, f), (TransRate, f), (LogME, f), (GBC, f), (LEEP, probs),
                       (NCE, probs.argmax(1))):
        assert issubclass(cls, FeatureMetric)
        informative, null = run(cls, first, y), run(cls, first, shuffled)
        assert (informative > null) == cls.higher_is_better, cls.__name__


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_reset_clears_everything(data, rng, make_data):
    x, y, _ = data
    m = HScore()
    m.update(x, y)
    m.compute()
    m.reset()
    with pytest.raises(ValueError, match=r"HScore.compute\(\) was called before any update"):
        m.compute()
    x2, y2 = make_data(rng, 40, 5, 4)
    m.update(x2, y2)
    assert float(m.compute()) == pytest.approx(float(hscore(x2, y2)), rel=1e-10)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_before_update_raises():
    for m in (HScore(), LogME(), GBC(), LEEP(), NCE(), OTCE()):
        with pytest.raises(ValueError, match="before any update"):
            m.compute()


def test_update_errors(data):
    x, y, probs = data
    m = HScore()
    m.update(x[:10], y[:10])
    with pytest.raises(ValueError, match="earlier batches had"):
        m.update(x[10:20, :3], y[10:20])
    bad = x[:5].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="`features` contains 1 NaN/Inf"):
        m.update(bad, y[:5])
    with pytest.raises(ValueError, match="`labels` has 4 entries but the features have 5 rows"):
        m.update(x[:5], y[:4])
    with pytest.raises(ValueError, match="`labels` holds non-integer values"):
        m.update(x[:5], y[:5] + 0.5)
    with pytest.raises(ValueError, match="`source_probs` rows must sum to 1"):
        LEEP().update(probs[:5] * 2, y[:5])
    with pytest.raises(ValueError, match="`domain` must be 'source' or 'target'"):
        OTCE().update(x[:5], y[:5], domain="src")
    o = OTCE()
    o.update(x[:5], y[:5], domain="source")
    with pytest.raises(ValueError, match="no target samples"):
        o.compute()
    with pytest.raises(ValueError, match="`solver` must be one of"):
        OTCE(solver="exact")
    with pytest.raises(ValueError, match="`max_stored` must be a positive integer"):
        HScore(max_stored=0)


def test_states_do_not_alias_the_callers_tensors(data):
    x, y, _ = data
    xt = torch.tensor(x)
    m = HScore()
    m.update(xt, torch.tensor(y))
    xt.zero_()
    assert float(m.compute()) == pytest.approx(float(hscore(x, y)), rel=1e-10)


# ----------------------------------------------------------------------------- reservoir
# (sample path only: a streaming class keeps samples when it computes a label-shuffle null)


def test_reservoir_keeps_everything_below_the_cap(data):
    x, y, _ = data
    m = HScore(null=2, max_stored=60)
    for xb, yb in pieces(x, y):
        m.update(xb, yb)
    assert float(m.compute()["score"]) == pytest.approx(float(hscore(x, y)), rel=1e-10)


def test_reservoir_bounds_memory_and_keeps_rows_paired():
    n, cap = 500, 40
    x = np.stack([np.arange(n), np.arange(n) % 7], axis=1).astype(float)  # row id in column 0
    y = np.arange(n) % 7
    m = HScore(null=2, max_stored=cap, seed=1)
    lo = 0
    for size in (3, 1, 90, 17, 250, 139):
        m.update(x[lo : lo + size], y[lo : lo + size])
        kept = torch.cat(m.features)
        assert kept.shape[0] == min(cap, lo + size)
        lo += size
    ids = torch.cat(m.features)[:, 0].long().numpy()
    labels = torch.cat(m.labels).numpy()
    assert len(set(ids)) == cap  # no row kept twice
    np.testing.assert_array_equal(labels, ids % 7)  # label travelled with its row
    assert float(m.compute()["score"]) == pytest.approx(float(hscore(x[np.sort(ids)], y[np.sort(ids)])), rel=1e-10)


def test_reservoir_is_uniform_over_all_samples():
    n, cap, runs = 1000, 100, 300
    batch_sizes = (1, 99, 150, 3, 400, 47, 300)  # sums to 1000
    x = np.arange(n, dtype=float)[:, None]
    y = np.arange(n) % 2
    counts = np.zeros(n)
    for seed in range(runs):
        m = HScore(null=2, max_stored=cap, seed=seed)
        lo = 0
        for size in batch_sizes:
            m.update(x[lo : lo + size], y[lo : lo + size])
            lo += size
        counts[torch.cat(m.features)[:, 0].long().numpy()] += 1
    assert counts.sum() == cap * runs
    # each item is kept with probability cap/n: per block of 100 items the count is
    # 3000 on average with standard deviation ≈ sqrt(runs · 100 · 0.1 · 0.9 · 0.9) ≈ 49
    blocks = counts.reshape(10, 100).sum(1)
    assert np.all(np.abs(blocks - runs * cap * 100 / n) < 250), blocks
    # early and late items alike (a reservoir that kept the first or last rows would fail)
    assert abs(counts[:500].mean() - counts[500:].mean()) < 1.0


def test_reservoir_reset_restarts_the_generator():
    x = np.arange(300, dtype=float)[:, None]
    y = np.arange(300) % 3
    m = HScore(null=2, max_stored=20, seed=5)
    m.update(x, y)
    first = torch.cat(m.features).clone()
    m.reset()
    m.update(x, y)
    assert torch.equal(torch.cat(m.features), first)


def test_otce_reservoir_is_per_domain(rng):
    xs, ys = rng.normal(size=(80, 3)), np.arange(80) % 3
    xt, yt = rng.normal(size=(15, 3)), np.arange(15) % 2
    m = OTCE(max_stored=25)
    for lo in range(0, 80, 20):
        m.update(xs[lo : lo + 20], ys[lo : lo + 20], domain="source")
    m.update(xt, yt, domain="target")
    r = m.compute_result()
    assert r.coupling.shape == (25, 15)
