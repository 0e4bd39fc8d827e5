"""Exact streaming classes: sufficient statistics give the functional on all the data.

Batches of uneven sizes in shuffled order, float32 and float64 input, arbitrary label values,
classes missing from some batches; state memory that does not grow with N; the sample path
kept for ``null``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics import moments as st
from tguide.metrics.functional.gbc import gbc
from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import nce
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.transrate import transrate, transrate_comparable
from tguide.metrics.stateful import GBC, NCE, HScore, HScoreShrinkage, LogME, StreamingMetric, TransRate, TransRateComparable

CASES = {
    "hscore": (HScore, {}, hscore),
    "hscore_shrinkage": (HScoreShrinkage, {}, hscore_shrinkage),
    "transrate": (TransRate, {"eps": 1e-2}, lambda x, y: transrate(x, y, eps=1e-2)),
    "transrate_comparable": (TransRateComparable, {"rank": 4}, lambda x, y: transrate_comparable(x, y, rank=4)),
    "logme": (LogME, {}, logme),
    "gbc": (GBC, {}, gbc),
}


def _data(rng, n, d, c, offset=50.0):
    """Features far from the origin (a test of the centred merges) with class structure."""
    y = rng.integers(0, c, n) * 7 - 3  # label values -3, 4, 11, ...
    y[:c] = np.arange(c) * 7 - 3  # every class present
    centres = rng.normal(size=(c, d)) * 2.0
    x = offset + centres[(y + 3) // 7] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    return x, y


def _feed(m, x, y, rng, dtype):
    perm = rng.permutation(x.shape[0])
    cuts = np.sort(rng.choice(np.arange(1, x.shape[0]), size=6, replace=False))
    for part in np.split(perm, cuts):
        m.update(torch.tensor(x[part], dtype=dtype), torch.tensor(y[part]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(400, 6, 4), (30, 12, 3)], ids=["N>D", "N<D"])
@pytest.mark.parametrize("name", list(CASES))
def test_streaming_equals_the_functional(rng, name, shape, dtype):
    cls, kwargs, fn = CASES[name]
    x, y = _data(rng, *shape)
    x_in = torch.tensor(x, dtype=dtype)  # the functional sees the same (rounded) values
    m = cls(**kwargs)
    assert m.streaming
    _feed(m, x_in.double().numpy(), y, rng, dtype)
    expected = float(fn(x_in, torch.tensor(y)))
    got = m.compute()
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_nce_streams_a_count_table(rng):
    z, y = rng.integers(0, 6, 500) * 3 + 100, rng.integers(0, 4, 500) - 2
    m = NCE()
    for part in np.array_split(rng.permutation(500), 7):
        m.update(torch.tensor(z[part]), torch.tensor(y[part]))
    assert float(m.compute()) == pytest.approx(float(nce(z, y)), rel=1e-12)
    assert m.t_key[0].shape == (len(set(zip(z.tolist(), y.tolist()))), 2)
    assert m.statistics().part("t")["key"].shape == m.t_key[0].shape


def test_classes_missing_from_batches(rng):
    x, y = _data(rng, 300, 5, 4)
    order = np.argsort(y, kind="stable")  # each batch sees one or two classes only
    m = TransRate()
    for part in np.array_split(order, 9):
        m.update(x[part], y[part])
    assert float(m.compute()) == pytest.approx(float(transrate(x, y)), rel=1e-9)


@pytest.mark.parametrize("cls", [HScore, HScoreShrinkage, TransRate, LogME, GBC])
def test_state_memory_does_not_grow_with_n(rng, cls):
    d, c = 4, 5

    def numel_after(n):
        m = cls()
        for lo in range(0, n, 5000):
            b = min(5000, n - lo)
            m.update(torch.randn(b, d, dtype=torch.float64) + 3.0, torch.arange(lo, lo + b) % c)
        m.compute()
        return m.state_nbytes(), sum(t.numel() for name in m._ndim for t in getattr(m, name))

    small, large = numel_after(1_000), numel_after(100_000)
    assert small == large


def test_logme_keeps_rows_only_up_to_d(rng):
    x, y = _data(rng, 40, 12, 3)
    m = LogME()
    m.update(x[:7], y[:7])
    m.update(x[7:12], y[7:12])  # 12 rows = D: still the N ≤ D route, on the rows
    assert sum(t.shape[0] for t in m.rows_features) == 12
    assert float(m.compute()) == pytest.approx(float(logme(x[:12], y[:12])), rel=1e-10)
    m.update(x[12:], y[12:])  # past D: rows dropped, statistics only
    assert all(t.numel() == 0 for t in m.rows_features) and m.statistics().rows is None
    assert float(m.compute()) == pytest.approx(float(logme(x, y)), rel=1e-9)


def test_null_keeps_samples_and_max_stored_is_ignored_when_streaming(rng):
    x, y = _data(rng, 80, 4, 3)
    m = HScore(null=5)
    assert not m.streaming
    m.update(x[:30], y[:30])
    m.update(x[30:], y[30:])
    out = m.compute()
    assert set(out) >= {"score", "z", "p_value"}
    assert float(out["score"]) == pytest.approx(float(hscore(x, y)), rel=1e-10)
    with pytest.warns(UserWarning, match="`max_stored` has no effect"):
        s = HScore(max_stored=10)
    s.update(x, y)
    assert float(s.compute()) == pytest.approx(float(hscore(x, y)), rel=1e-10)
    assert not GBC(pca_dim=2).streaming  # PCA needs the samples


def test_one_class_and_bad_batches_raise(rng):
    x, y = _data(rng, 50, 4, 3)
    m = HScore()
    m.update(x, np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match="at least 2"):
        m.compute()
    with pytest.raises(ValueError, match="earlier batches had"):
        m.update(x[:, :3], y)
    g = GBC()
    g.update(x[:3], np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        g.compute()  # class 0 has a single sample


def test_merge_of_moments_is_exact(rng):
    """Third and fourth moments shifted to the merged mean equal the direct ones."""
    x = rng.normal(size=(200, 3)) * 3 + 10
    keys = torch.zeros(200, 1, dtype=torch.long)
    xt = torch.tensor(x)
    parts = np.split(np.arange(200), [1, 50, 120])
    rec = None
    for p in parts:
        rec = st.merge(rec, st.batch_record(xt[p], keys[p], ("mean", "m2", "t3", "q4")))
    z = x - x.mean(0)
    sq = (z * z).sum(1)
    np.testing.assert_allclose(rec["m2"][0].numpy(), z.T @ z, rtol=1e-12)
    np.testing.assert_allclose(rec["t3"][0].numpy(), (sq[:, None] * z).sum(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(rec["q4"][0]), (sq * sq).sum(), rtol=1e-12)


def test_every_streaming_class_is_a_streaming_metric():
    for cls, _, _ in CASES.values():
        assert issubclass(cls, StreamingMetric)
    assert issubclass(NCE, StreamingMetric)
