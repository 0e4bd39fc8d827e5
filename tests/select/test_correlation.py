"""Correlation helpers against scipy.stats on known and random inputs (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tguide.select.correlation import kendall, pearson, rankdata, regret, spearman, summarise, top1, weighted_tau

REFERENCE = {
    pearson: lambda a, b: stats.pearsonr(a, b)[0],
    spearman: lambda a, b: stats.spearmanr(a, b)[0],
    kendall: lambda a, b: stats.kendalltau(a, b)[0],  # tau-b
    weighted_tau: lambda a, b: stats.weightedtau(a, b)[0],
}


@pytest.mark.parametrize("fn", list(REFERENCE), ids=lambda f: f.__name__)
def test_against_scipy_random_with_ties(fn) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for t in range(200):
        n = int(rng.integers(2, 16))
        x = rng.integers(0, 4, n).astype(float) if t % 2 else rng.normal(size=n)
        y = rng.integers(0, 3, n).astype(float) if t % 3 == 0 else rng.normal(size=n)
        if np.unique(x).size < 2 or np.unique(y).size < 2:
            continue
        assert fn(x, y) == pytest.approx(REFERENCE[fn](x, y), abs=1e-12), (x, y)
        checked += 1
    assert checked > 100


def test_known_values() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    assert kendall(x, [1, 2, 3, 4]) == 1.0 and kendall(x, [4, 3, 2, 1]) == -1.0
    assert spearman(x, [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, [1, 4, 9, 16]) < 1.0
    # one discordant pair among 6: tau = (5 - 1) / 6
    assert kendall(x, [2, 1, 3, 4]) == pytest.approx(4 / 6)


def test_weighted_tau_weighs_the_top() -> None:
    """Swapping the two best items costs more than swapping the two worst."""
    truth = [5.0, 4.0, 3.0, 2.0, 1.0]
    swap_top = [4.0, 5.0, 3.0, 2.0, 1.0]
    swap_bottom = [5.0, 4.0, 3.0, 1.0, 2.0]
    assert kendall(swap_top, truth) == pytest.approx(kendall(swap_bottom, truth))
    assert weighted_tau(swap_top, truth) < weighted_tau(swap_bottom, truth) < 1.0


def test_rankdata_ties_and_constant_input() -> None:
    np.testing.assert_allclose(rankdata([3, 1, 3, 2]), stats.rankdata([3, 1, 3, 2]))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall([1, 2, 3], [5, 5, 5]))


def test_top1_regret_summarise() -> None:
    acc = {"a": 0.9, "b": 0.7, "c": 0.8}
    good = {"a": 3.0, "b": 1.0, "c": 2.0}
    bad = {"a": 1.0, "b": 3.0, "c": 2.0, "extra": 9.0}  # keys not in acc are ignored
    s = summarise(good, acc)
    assert (s.n, s.top1, s.regret, s.kendall) == (3, 1.0, 0.0, 1.0)
    s = summarise(bad, acc)
    assert s.n == 3 and s.top1 == 0.0 and s.regret == pytest.approx(0.2)
    assert top1([1, 2, 2], [0.5, 0.9, 0.9]) == 1.0 and regret([3, 2, 1], [0.1, 0.5, 0.2]) == pytest.approx(0.4)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        kendall([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="finite"):
        weighted_tau([1, float("nan")], [1, 2])
