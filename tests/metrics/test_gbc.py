"""GBC against a numpy formula with full matrices and determinants, properties, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from tguide.metrics.functional.gbc import gbc

SHAPES = [(200, 10, 4), (60, 100, 3), (500, 20, 10), (40, 2, 2)]  # (N, D, C); D > N included


def data(rng, n, d, c, signal=0.5):
    y = rng.permutation(np.arange(n) % c)
    return signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d)), y


def np_gbc(f, y, gaussian, scalar_det=False):
    """Bhattacharyya distance with explicit covariance matrices, inverses and determinants."""
    stats = {}
    for k in np.unique(y):
        g = f[y == k]
        var = np.maximum(g.var(axis=0), 1e-4)
        if gaussian == "spherical":
            var = np.full_like(var, var.mean())
        stats[k] = (g.mean(axis=0), np.diag(var))
    total = 0.0
    for a, b in itertools.permutations(stats, 2):
        (m1, s1), (m2, s2) = stats[a], stats[b]
        s = (s1 + s2) / 2
        dm = m1 - m2
        if scalar_det:  # the authors' spherical code: log of the scalar variances
            logdet = np.log(s[0, 0]) - 0.5 * np.log(s1[0, 0]) - 0.5 * np.log(s2[0, 0])
        else:
            logdet = np.linalg.slogdet(s)[1] - 0.5 * np.linalg.slogdet(s1)[1] - 0.5 * np.linalg.slogdet(s2)[1]
        total += np.exp(-(dm @ np.linalg.solve(s, dm) / 8 + 0.5 * logdet))
    return -total


@pytest.mark.parametrize("n,d,c", SHAPES)
@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_matches_numpy(rng, n, d, c, gaussian):
    f, y = data(rng, n, d, c)
    got = gbc(torch.from_numpy(f), torch.from_numpy(y), gaussian=gaussian)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(np_gbc(f, y, gaussian), rel=1e-9)
    assert -c * (c - 1) <= float(got) <= 0


@pytest.mark.parametrize("n,d,c", SHAPES[:2])
def test_reference_code_spherical(rng, n, d, c):
    f, y = data(rng, n, d, c)
    got = gbc(f, y, gaussian="spherical", reference_code=True)
    assert float(got) == pytest.approx(np_gbc(f, y, "spherical", scalar_det=True), rel=1e-9)
    assert float(gbc(f, y, gaussian="diagonal", reference_code=True)) == float(gbc(f, y, gaussian="diagonal"))


def test_pca_matches_sklearn(rng):
    f, y = data(rng, 120, 30, 4)
    p = PCA(n_components=8, svd_solver="full").fit_transform(f)
    for gaussian in ("spherical", "diagonal"):
        assert float(gbc(f, y, gaussian=gaussian, pca_dim=8)) == pytest.approx(np_gbc(p, y, gaussian), rel=1e-8)


def test_blocked_rows_agree(rng):
    """Many classes and dimensions: the (C, C, D) table is built in row blocks."""
    f, y = data(rng, 600, 300, 150)
    mu = np.stack([f[y == k].mean(0) for k in range(150)])
    var = np.maximum(np.stack([f[y == k].var(0) for k in range(150)]), 1e-4)
    avg = (var[:, None] + var[None]) / 2  # (C, C, D), with diagonal covariances in vector form
    db = ((mu[:, None] - mu[None]) ** 2 / avg).sum(2) / 8 + 0.5 * (
        np.log(avg).sum(2) - 0.5 * np.log(var).sum(1)[:, None] - 0.5 * np.log(var).sum(1)[None]
    )
    expected = -(np.exp(-db).sum() - np.exp(-np.diag(db)).sum())
    assert float(gbc(f, y, gaussian="diagonal")) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- properties
def test_invariances(rng, rotation, rename):
    f, y = data(rng, 200, 6, 4)
    perm = rng.permutation(len(y))
    q = rotation(rng, 6)
    for gaussian in ("spherical", "diagonal"):
        base = float(gbc(f, y, gaussian=gaussian))
        assert float(gbc(f, rename(rng, y), gaussian=gaussian)) == pytest.approx(base, rel=1e-12)
        assert float(gbc(f[perm], y[perm], gaussian=gaussian)) == pytest.approx(base, rel=1e-12)
        assert float(gbc(f - 7.0, y, gaussian=gaussian)) == pytest.approx(base, rel=1e-10)
        assert float(gbc(3.0 * f, y, gaussian=gaussian)) == pytest.approx(base, rel=1e-10)
        with_pca = float(gbc(f, y, gaussian=gaussian, pca_dim=6))  # PCA absorbs rotations
        assert float(gbc(f @ q, y, gaussian=gaussian, pca_dim=6)) == pytest.approx(with_pca, rel=1e-8)
    spherical = float(gbc(f, y))
    assert float(gbc(f @ q, y)) == pytest.approx(spherical, rel=1e-10)


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    for gaussian in ("spherical", "diagonal"):
        s = [float(gbc(noise + a * centres[y], y, gaussian=gaussian)) for a in (0.0, 0.5, 1.5, 5.0)]
        assert s == sorted(s) and s[0] < -5.5 and s[-1] > -0.01  # 6 ordered pairs: BC ≈ 1 → 0


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="features.*NaN"):
        gbc(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        gbc(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*19 entries"):
        gbc(f, y[:19])
    with pytest.raises(ValueError, match="fewer than 2 samples"):  # a class of one (here N = C)
        gbc(f[:3], np.arange(3))
    with pytest.raises(ValueError, match="gaussian"):
        gbc(f, y, gaussian="full")
    with pytest.raises(ValueError, match="pca_dim"):
        gbc(f, y, pca_dim=0)
