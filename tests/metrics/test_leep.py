"""LEEP and NCE against independent numpy formulas (explicit loops), properties, errors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from tguide.metrics.functional.leep import leep, nce


def np_leep(theta: np.ndarray, y: np.ndarray) -> float:
    n, cs = theta.shape
    classes = np.unique(y)
    joint = np.array([[theta[y == label, z].sum() / n for z in range(cs)] for label in classes])
    p_z = joint.sum(axis=0)
    total = 0.0
    for i in range(n):
        row = np.searchsorted(classes, y[i])
        total += math.log(sum(joint[row, z] / p_z[z] * theta[i, z] for z in range(cs) if p_z[z] > 0))
    return total / n


def np_nce(z: np.ndarray, y: np.ndarray) -> float:
    n = len(y)
    pairs = Counter(zip(z.tolist(), y.tolist()))
    marg = Counter(z.tolist())
    return sum(k / n * math.log(k / marg[a]) for (a, _), k in pairs.items())


def random_probs(rng: np.random.Generator, n: int, cs: int, sharp: float = 2.0) -> np.ndarray:
    logits = sharp * rng.normal(size=(n, cs))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------- LEEP
@pytest.mark.parametrize("n,cs,c", [(50, 5, 3), (300, 40, 100), (80, 1, 4), (40, 2, 2)])
def test_leep_matches_numpy(rng, n, cs, c):
    y = rng.permutation(np.arange(n) % c)
    theta = random_probs(rng, n, cs)
    got = leep(torch.from_numpy(theta), torch.from_numpy(y))
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), np_leep(theta, y)) <= 1e-6
    assert float(got) <= 1e-12


def test_leep_unused_source_class_is_finite(rng):
    theta = random_probs(rng, 60, 6)
    theta[:, [1, 4]] = 0.0
    theta /= theta.sum(axis=1, keepdims=True)
    y = np.arange(60) % 3
    got = float(leep(theta, y))
    assert math.isfinite(got)
    assert rel_err(got, np_leep(theta, y)) <= 1e-6


def test_leep_perfect_source_is_zero_and_equals_nce_for_hard_predictions(rng):
    z = rng.integers(0, 7, size=100)
    theta = np.eye(7)[z]
    # a target that is a function of the source class: perfect transfer, LEEP = 0
    assert float(leep(theta, z % 3)) == pytest.approx(0.0, abs=1e-12)
    # one-hot θ: Σ_z P(y_i|z) θ_iz = P(y_i|z_i), so LEEP = −H(Y|Z) = NCE
    y = rng.integers(0, 4, size=100)
    assert float(leep(theta[:, np.unique(z)], y)) == pytest.approx(np_nce(z, y), rel=1e-10)


def test_leep_informative_source_scores_higher(rng):
    y = rng.permutation(np.arange(200) % 4)
    informative = random_probs(rng, 200, 8) * 0.3 + 0.7 * np.eye(8)[2 * y]
    uninformative = random_probs(rng, 200, 8)
    assert float(leep(informative, y)) > float(leep(uninformative, y))


def test_leep_invariances(rng, rename):
    n, cs, c = 120, 9, 4
    y = rng.permutation(np.arange(n) % c)
    theta = random_probs(rng, n, cs)
    base = float(leep(theta, y))
    perm = rng.permutation(n)
    assert float(leep(theta, rename(rng, y))) == pytest.approx(base, rel=1e-12)
    assert float(leep(theta[perm], y[perm])) == pytest.approx(base, rel=1e-12)
    assert float(leep(theta[:, rng.permutation(cs)], y)) == pytest.approx(base, rel=1e-12)


def test_leep_errors(rng):
    theta = random_probs(rng, 10, 3)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match=r"`source_probs` rows must sum to 1.*softmax"):
        leep(theta * 2, y)
    with pytest.raises(ValueError, match=r"`source_probs` has negative entries"):
        leep(theta - theta.mean(), y)
    bad = theta.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"`source_probs` contains 1 NaN/Inf"):
        leep(bad, y)
    with pytest.raises(ValueError, match=r"`source_probs` must be 2-D"):
        leep(theta[:, 0], y)
    with pytest.raises(ValueError, match=r"`labels` has 9 entries"):
        leep(theta, y[:-1])
    with pytest.raises(ValueError, match=r"`labels` has 1 distinct class"):
        leep(theta, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match=r"`source_probs` is empty"):
        leep(np.zeros((0, 3)), np.zeros(0, dtype=int))


# ---------------------------------------------------------------- NCE
@pytest.mark.parametrize("n,cz,c", [(50, 5, 3), (400, 30, 100), (30, 2, 2), (60, 1, 3)])
def test_nce_matches_numpy(rng, n, cz, c):
    y = rng.permutation(np.arange(n) % c)
    z = rng.integers(0, cz, size=n)
    got = nce(torch.from_numpy(z), torch.from_numpy(y))
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), np_nce(z, y)) <= 1e-6
    assert float(got) <= 1e-12


def test_nce_function_of_source_is_zero_and_single_source_is_minus_entropy(rng):
    z = rng.integers(0, 10, size=200)
    assert float(nce(z, z % 4)) == pytest.approx(0.0, abs=1e-12)
    y = rng.integers(0, 3, size=200)
    p = np.bincount(y) / 200
    assert float(nce(np.full(200, 5), y)) == pytest.approx(float(np.sum(p * np.log(p))), rel=1e-12)


def test_nce_invariances(rng, rename):
    z = rng.integers(0, 6, size=150)
    y = (z + rng.integers(0, 2, size=150)) % 4
    base = float(nce(z, y))
    perm = rng.permutation(150)
    assert float(nce(rename(rng, z), rename(rng, y))) == pytest.approx(base, rel=1e-12)
    assert float(nce(z[perm], y[perm])) == pytest.approx(base, rel=1e-12)


def test_nce_errors(rng):
    z = rng.integers(0, 3, size=10)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match=r"`source_labels` has 9 rows but `labels` has 10"):
        nce(z[:-1], y)
    with pytest.raises(ValueError, match=r"`labels` has 1 distinct class"):
        nce(z, np.ones(10, dtype=int))
    with pytest.raises(ValueError, match=r"`source_labels` must be 1-D.*argmax"):
        nce(random_probs(rng, 10, 3), y)
    with pytest.raises(ValueError, match=r"`source_labels` holds non-integer"):
        nce(z + 0.25, y)
    with pytest.raises(ValueError, match=r"`labels` is empty"):
        nce(np.zeros(0, dtype=int), np.zeros(0, dtype=int))
