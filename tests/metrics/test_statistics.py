"""One formula per score: functional == class == score of merged statistics; null fast path == slow loop.

Statistics of uneven shuffled batches (classes missing from some, offset features, float32 and
float64) merged in a shuffled order give the functional on all rows to 1e-9; the label-shuffle
null's fast path (relabelled statistics) gives the same numbers as calling the functional on
every permutation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics import (GBC, NCE, HScore, HScoreShrinkage, LogME, TransRate, TransRateComparable, gbc, hscore,
                            hscore_shrinkage, label_shuffle_null, leep, logme, nce, transrate, transrate_comparable)
from tguide.metrics.functional.gbc import gbc_from_statistics
from tguide.metrics.functional.hscore import hscore_from_statistics, hscore_shrinkage_from_statistics
from tguide.metrics.functional.leep import leep_from_joint, nce_from_statistics
from tguide.metrics.functional.logme import logme_from_statistics
from tguide.metrics.functional.permutation import label_permutations
from tguide.metrics.functional.transrate import transrate_comparable_from_statistics, transrate_from_statistics
from tguide.metrics.registry import get_metric
from tguide.metrics.statistics import (ClassGramStatistics, ClassVarianceStatistics, GramStatistics, LabelPairCounts,
                                       LEEPJointTable)

# name: (statistics type, score from statistics, functional, class, kwargs)
CASES = {
    "hscore": (GramStatistics, hscore_from_statistics, hscore, HScore, {}),
    "hscore_shrinkage": (GramStatistics, hscore_shrinkage_from_statistics, hscore_shrinkage, HScoreShrinkage, {}),
    "logme": (GramStatistics, logme_from_statistics, logme, LogME, {}),
    "transrate": (ClassGramStatistics, transrate_from_statistics, transrate, TransRate, {"eps": 1e-2}),
    "transrate_comparable": (ClassGramStatistics, transrate_comparable_from_statistics, transrate_comparable,
                             TransRateComparable, {"rank": 4}),
    "gbc": (ClassVarianceStatistics, gbc_from_statistics, gbc, GBC, {"gaussian": "diagonal"}),
}


def _data(rng, n, d, c):
    y = rng.integers(0, c, n) * 5 + 2  # label values 2, 7, 12, ...
    y[:c] = np.arange(c) * 5 + 2
    centres = rng.normal(size=(c, d)) * 2.0
    x = 30.0 + centres[(y - 2) // 5] + rng.normal(size=(n, d))
    return x, y


def _batches(rng, n):
    """Uneven batches of a shuffled order (sizes 1 and more)."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=5, replace=False))
    return np.split(rng.permutation(n), cuts)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(300, 6, 4), (25, 40, 3)], ids=["N>D", "N<D"])
@pytest.mark.parametrize("name", list(CASES))
def test_functional_class_and_merged_statistics_agree(rng, name, shape, dtype):
    kind, from_stats, fn, cls, kwargs = CASES[name]
    x, y = _data(rng, *shape)
    xt = torch.tensor(x, dtype=dtype)
    expected = float(fn(xt, torch.tensor(y), **kwargs))
    parts = [kind.from_samples(xt[p], torch.tensor(y[p])) for p in _batches(rng, x.shape[0])]
    merged = kind()
    for i in rng.permutation(len(parts)):
        merged = merged.merge(parts[i])
    streamed = kind()
    for idx in _batches(rng, x.shape[0]):
        streamed.update(xt[idx], torch.tensor(y[idx]))
    m = cls(**kwargs)
    for p in _batches(rng, x.shape[0]):
        m.update(xt[p], torch.tensor(y[p]))
    assert merged.n == x.shape[0]
    assert float(from_stats(merged, **kwargs)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(from_stats(streamed, **kwargs)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(m.compute()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(get_metric(name).from_statistics(merged, **kwargs)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_update_merge_and_inputs_are_left_alone(rng):
    x, y = _data(rng, 120, 5, 3)
    a = GramStatistics.from_samples(x[:50], y[:50])
    b = GramStatistics.from_samples(x[50:], y[50:])
    before = {k: v.clone() for k, v in a.to_tensors().items()}
    ab = a.merge(b)
    assert all(torch.equal(before[k], v) for k, v in a.to_tensors().items())  # merge makes a new object
    a.update(x[50:], y[50:])
    assert float(hscore_from_statistics(a)) == pytest.approx(float(hscore_from_statistics(ab)), rel=1e-12)
    assert float(hscore_from_statistics(ab)) == pytest.approx(float(hscore(x, y)), rel=1e-9)
    assert GramStatistics.from_tensors(ab.to_tensors()).n == 120


def test_rows_kept_up_to_d_then_moments(rng):
    x, y = _data(rng, 30, 10, 2)
    s = GramStatistics.from_samples(x[:6], y[:6])
    s.update(x[6:10], y[6:10])
    assert s.rows is not None and s.n == 10  # 10 rows = D: rows
    s.update(x[10:], y[10:])
    assert s.rows is None and s.records is not None
    assert float(logme_from_statistics(s)) == pytest.approx(float(logme(x, y)), rel=1e-9)


def test_nce_and_leep_tables(rng):
    z, y = rng.integers(0, 6, 400) * 3, rng.integers(0, 4, 400) + 10
    merged = LabelPairCounts()
    for p in _batches(rng, 400):
        merged = merged.merge(LabelPairCounts.from_samples(z[p], y[p]))
    assert float(nce_from_statistics(merged)) == pytest.approx(float(nce(z, y)), rel=1e-12)
    m = NCE()
    for p in _batches(rng, 400):
        m.update(torch.tensor(z[p]), torch.tensor(y[p]))
    assert float(m.compute()) == pytest.approx(float(nce(z, y)), rel=1e-12)
    theta = torch.softmax(torch.tensor(rng.normal(size=(400, 6))), dim=1)
    table = LEEPJointTable()
    for p in _batches(rng, 400):
        table.update(theta[p], y[p])
    # the joint table: P̂(y, z) = Σ_{i: y_i = y} θ_iz / N, checked against a direct sum
    direct = np.stack([theta.numpy()[y == v].sum(0) for v in np.unique(y)]) / 400
    np.testing.assert_allclose(table.joint().numpy(), direct, rtol=1e-12)
    assert float(leep_from_joint(table, theta, y)) == pytest.approx(float(leep(theta, y)), rel=1e-12)


def test_merging_other_types_or_widths_raises(rng):
    x, y = _data(rng, 40, 4, 2)
    with pytest.raises(TypeError):
        GramStatistics.from_samples(x, y).merge(ClassGramStatistics.from_samples(x, y))
    with pytest.raises(ValueError, match="earlier batches had"):
        GramStatistics.from_samples(x, y).merge(GramStatistics.from_samples(x[:, :3], y))
    with pytest.raises(ValueError, match="at least 2"):
        hscore_from_statistics(GramStatistics.from_samples(x, np.zeros(40, dtype=int)))
    with pytest.raises(ValueError, match="empty"):
        GramStatistics().part("g")


# ----------------------------------------------------------------------------- nulls


@pytest.mark.parametrize("shape", [(150, 5, 3), (20, 30, 3)], ids=["N>D", "N<D"])
@pytest.mark.parametrize("name", list(CASES))
def test_null_fast_path_equals_a_slow_loop(rng, name, shape):
    _, _, fn, _, kwargs = CASES[name]
    x, y = _data(rng, *shape)
    xt, yt = torch.tensor(x), torch.tensor(y)
    res = label_shuffle_null(fn, xt, yt, n_perm=6, seed=3, **kwargs)
    slow = torch.stack([fn(xt, yt[p], **kwargs) for p in label_permutations(x.shape[0], 6, 3)])
    assert float(res.score) == pytest.approx(float(fn(xt, yt, **kwargs)), rel=1e-12)
    np.testing.assert_allclose(res.null.numpy(), slow.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("between_ddof", [0, 1])
def test_shrinkage_convention_flag_is_one_formula(rng, between_ddof):
    """``between_ddof`` reaches the functional, the score of merged statistics and the null alike."""
    x, y = _data(rng, 150, 5, 3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    expected = float(hscore_shrinkage(xt, yt, between_ddof=between_ddof))
    merged = GramStatistics()
    for p in _batches(rng, 150):
        merged = merged.merge(GramStatistics.from_samples(xt[p], yt[p]))
    assert float(hscore_shrinkage_from_statistics(merged, between_ddof=between_ddof)) == pytest.approx(
        expected, rel=1e-9
    )
    res = label_shuffle_null(hscore_shrinkage, xt, yt, n_perm=4, seed=1, between_ddof=between_ddof)
    slow = torch.stack([hscore_shrinkage(xt, yt[p], between_ddof=between_ddof) for p in label_permutations(150, 4, 1)])
    assert float(res.score) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(res.null.numpy(), slow.numpy(), rtol=1e-9, atol=1e-12)
    # the default is the published listing's N − 1: N/(N − 1) times the 1/N variant
    assert float(hscore_shrinkage(xt, yt)) == pytest.approx(
        float(hscore_shrinkage(xt, yt, between_ddof=0)) * 150 / 149, rel=1e-12
    )


def test_null_fast_path_of_gbc_with_pca(rng):
    x, y = _data(rng, 120, 8, 3)
    res = label_shuffle_null(gbc, x, y, n_perm=5, seed=1, pca_dim=3)
    slow = torch.stack([gbc(x, torch.tensor(y)[p], pca_dim=3) for p in label_permutations(120, 5, 1)])
    np.testing.assert_allclose(res.null.numpy(), slow.numpy(), rtol=1e-9, atol=1e-12)


def test_null_fast_path_of_nce_and_leep(rng):
    z, y = rng.integers(0, 5, 200), rng.integers(0, 3, 200)
    theta = torch.softmax(torch.tensor(rng.normal(size=(200, 5))), dim=1)
    perms = label_permutations(200, 6, 2)
    for fn, first in ((nce, torch.tensor(z)), (leep, theta)):
        res = label_shuffle_null(fn, first, y, n_perm=6, seed=2)
        slow = torch.stack([fn(first, torch.tensor(y)[p]) for p in perms])
        np.testing.assert_allclose(res.null.numpy(), slow.numpy(), rtol=1e-9, atol=1e-12)
