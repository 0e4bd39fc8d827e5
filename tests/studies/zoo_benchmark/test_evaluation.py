"""The zoo benchmark's evaluation protocol, against scipy and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tguide.studies.zoo_benchmark.evaluation import (agreement, bootstrap_ci, leave_one_target_out, relative_top_accuracy,
                                      setup_stability, subpools, topk_hit, zscore_mean)


def test_agreement_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    names = [f"m{i}" for i in range(9)]
    s, t = rng.normal(size=9), rng.uniform(0.3, 0.9, size=9)
    a = agreement(dict(zip(names, s)), dict(zip(names, t)))
    assert a["n"] == 9
    assert a["weighted_tau"] == pytest.approx(stats.weightedtau(s, t).statistic, abs=1e-12)
    assert a["kendall"] == pytest.approx(stats.kendalltau(s, t).statistic, abs=1e-12)
    assert a["pearson"] == pytest.approx(stats.pearsonr(s, t).statistic, abs=1e-12)


def test_top_hits_and_relative_accuracy() -> None:
    truth = [0.5, 0.9, 0.7, 0.6]
    assert topk_hit([4, 1, 3, 2], truth, 1) == 0.0  # picks item 0 (0.5); the best is item 1
    assert topk_hit([4, 1, 3, 2], truth, 3) == 0.0  # top-3 = items 0, 2, 3
    assert topk_hit([4, 3, 1, 2], truth, 2) == 1.0
    assert relative_top_accuracy([4, 1, 3, 2], truth) == pytest.approx(0.5 / 0.9)
    assert relative_top_accuracy([0, 9, 0, 0], truth) == 1.0


def test_agreement_drops_candidates_without_values() -> None:
    a = agreement({"a": 1.0, "b": float("nan"), "c": 3.0}, {"a": 0.1, "b": 0.5, "c": 0.9})
    assert a["n"] == 2 and a["top1"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        agreement({"a": 1.0}, {"a": 0.1})


def test_subpools_are_seeded_and_within_bounds() -> None:
    names = [f"m{i}" for i in range(12)]
    p1, p2 = subpools(names, 200, 4, seed=3), subpools(names, 200, 4, seed=3)
    assert p1 == p2 and len(p1) == 200
    sizes = {len(p) for p in p1}
    assert min(sizes) >= 4 and max(sizes) <= 12 and len(sizes) > 5
    assert all(len(set(p)) == len(p) for p in p1)


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(0.5, 1, 20))
    large = bootstrap_ci(rng.normal(0.5, 1, 2000))
    assert small[1] < small[0] < small[2] and large[1] < large[0] < large[2]
    assert (large[2] - large[1]) < (small[2] - small[1]) / 5
    assert large[1] < 0.5 < large[2]


def test_setup_stability() -> None:
    a = {"x": 1.0, "y": 2.0, "z": 3.0}
    assert setup_stability([a, {k: 10 * v for k, v in a.items()}]) == pytest.approx(1.0)
    assert setup_stability([a, {k: -v for k, v in a.items()}]) == pytest.approx(-1.0)
    assert math.isnan(setup_stability([a]))


def test_zscore_mean_is_an_average_of_standardised_parts() -> None:
    p = {"a": 1.0, "b": 2.0, "c": 3.0}
    q = {"a": 30.0, "b": 10.0, "c": 20.0}
    z = zscore_mean([p, q])
    zp = (np.array([1, 2, 3]) - 2) / np.std([1, 2, 3])
    zq = (np.array([30, 10, 20]) - 20) / np.std([30, 10, 20])
    assert [z[k] for k in "abc"] == pytest.approx(((zp + zq) / 2).tolist())


def test_leave_one_target_out_never_uses_the_held_out_target() -> None:
    per = {"good_elsewhere": {"t1": 0.9, "t2": 0.9, "t3": -1.0},
           "good_on_t3": {"t1": 0.1, "t2": 0.1, "t3": 1.0}}
    chosen = leave_one_target_out(per)
    assert chosen["t3"] == "good_elsewhere"  # t3's own values do not choose for t3
    assert chosen["t1"] == "good_on_t3"  # mean over t2, t3: 0.55 vs -0.05
