"""Linear-probe accuracy against sklearn's StandardScaler + RidgeClassifier on the same folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tguide.metrics.functional.linear_probe import linear_probe_accuracy, stratified_folds


def data(rng, n, d, c, signal=0.5):
    y = rng.permutation(np.arange(n) % c)
    return signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d)), y


def sk_probe(f, y, fold, alpha):
    accs = []
    for k in np.unique(fold):
        test = fold == k
        model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha)).fit(f[~test], y[~test])
        accs.append(np.mean(model.predict(f[test]) == y[test]))
    return float(np.mean(accs))


@pytest.mark.parametrize("n,d,c", [(200, 10, 4), (60, 100, 3), (103, 7, 5), (90, 3, 2)])  # D > N included
@pytest.mark.parametrize("l2", [1.0, 25.0])
def test_matches_sklearn_ridge_classifier(rng, n, d, c, l2):
    f, y = data(rng, n, d, c)
    f[:, 0] = 3.0  # a constant feature: scale 1, as sklearn's StandardScaler
    got = linear_probe_accuracy(torch.from_numpy(f), torch.from_numpy(y), l2=l2, seed=4)
    assert got.dtype == torch.float64 and got.ndim == 0
    fold = stratified_folds(torch.from_numpy(np.unique(y, return_inverse=True)[1]), 5, 4).numpy()
    assert float(got) == pytest.approx(sk_probe(f, y, fold, l2), abs=1e-12)


def test_folds_are_stratified_balanced_and_name_free(rng, rename):
    y = rng.permutation(np.arange(103) % 5)
    codes = torch.from_numpy(y)
    fold = stratified_folds(codes, 5, 0).numpy()
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1
    for k in range(5):
        per_fold = np.bincount(fold[y == k], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    renamed = np.unique(rename(rng, y), return_inverse=True)[1]
    assert np.array_equal(stratified_folds(torch.from_numpy(renamed), 5, 0).numpy(), fold)
    assert not np.array_equal(stratified_folds(codes, 5, 1).numpy(), fold)


def test_class_missing_from_a_training_fold_is_never_predicted():
    f = np.array([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1], [9.0]])
    y = np.array([0, 0, 0, 0, 1, 1, 2])  # class 2 has one sample: absent when it is held out
    fold = stratified_folds(torch.tensor([0, 0, 0, 0, 1, 1, 2]), 2, 0).numpy()
    assert float(linear_probe_accuracy(f, y, folds=2)) == pytest.approx(sk_probe(f, y, fold, 1.0), abs=1e-12)


# ---------------------------------------------------------------- properties
def test_invariances(rng, rename):
    f, y = data(rng, 150, 6, 3)
    base = float(linear_probe_accuracy(f, y))
    assert 0 <= base <= 1
    assert float(linear_probe_accuracy(f, y)) == base  # seeded
    assert float(linear_probe_accuracy(f, rename(rng, y))) == base
    scale = rng.uniform(0.1, 10.0, size=6)  # any per-feature affine map
    assert float(linear_probe_accuracy(f * scale - 4.0, y)) == pytest.approx(base, abs=1e-12)


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    s = [float(linear_probe_accuracy(noise + a * centres[y], y)) for a in (0.0, 1.0, 3.0, 8.0)]
    assert s == sorted(s) and s[-1] == 1.0 and s[0] < 0.5


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[0, 2] = np.nan
    with pytest.raises(ValueError, match="features.*NaN"):
        linear_probe_accuracy(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        linear_probe_accuracy(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*19 entries"):
        linear_probe_accuracy(f, y[:19])
    with pytest.raises(ValueError, match="folds"):
        linear_probe_accuracy(f[:4], y[:4], folds=5)  # fewer samples than folds
    with pytest.raises(ValueError, match="folds"):
        linear_probe_accuracy(f, y, folds=1)
    with pytest.raises(ValueError, match="l2"):
        linear_probe_accuracy(f, y, l2=0.0)
