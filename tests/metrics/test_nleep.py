"""NLEEP: the EM against sklearn's GaussianMixture, the score against numpy LEEP, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from tguide.metrics.functional.ncti import pca_scores
from tguide.metrics.functional.nleep import _kmeans_init, fit_gaussian_mixture, nleep


def data(rng, n, d, c, signal=1.5):
    y = rng.permutation(np.arange(n) % c)
    return signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d)), y


def np_leep(theta, y):
    """LEEP (Nguyen et al. 2020) with explicit loops over classes."""
    y = np.unique(y, return_inverse=True)[1]
    n = len(y)
    joint = np.stack([theta[y == k].sum(0) / n for k in range(y.max() + 1)])  # (C, M)
    cond = joint / joint.sum(0, keepdims=True)
    return np.mean(np.log((theta @ cond.T)[np.arange(n), y]))


# ---------------------------------------------------------------- the mixture
@pytest.mark.parametrize("n,d,m", [(300, 5, 6), (150, 3, 4)])
def test_em_matches_sklearn_from_the_same_start(rng, n, d, m):
    x, _ = data(rng, n, d, 3)
    start = _kmeans_init(torch.from_numpy(x), m, torch.Generator().manual_seed(0), 1e-6)
    fit = fit_gaussian_mixture(torch.from_numpy(x), m, init=start, tol=1e-12, max_iter=5000)
    w, mu, var = (t.numpy() for t in start)
    ref = GaussianMixture(
        m, covariance_type="diag", weights_init=w, means_init=mu, precisions_init=1 / var,
        tol=1e-12, max_iter=5000, reg_covar=1e-6,
    ).fit(x)
    assert fit.converged and ref.converged_
    np.testing.assert_allclose(fit.resp.numpy(), ref.predict_proba(x), atol=1e-8)
    np.testing.assert_allclose(fit.means.numpy(), ref.means_, rtol=1e-6, atol=1e-8)
    assert fit.log_likelihood == pytest.approx(ref.score(x), rel=1e-10)


def test_kmeans_init_is_seeded(rng):
    x = torch.from_numpy(data(rng, 200, 4, 4)[0])
    a = _kmeans_init(x, 7, torch.Generator().manual_seed(3), 1e-6)
    b = _kmeans_init(x, 7, torch.Generator().manual_seed(3), 1e-6)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert float(a[0].sum()) == pytest.approx(1.0)


# ---------------------------------------------------------------- the score
@pytest.mark.parametrize("n,d,c", [(300, 10, 3), (60, 100, 3), (400, 20, 8)])  # D > N included
def test_matches_numpy_leep_on_the_mixture(rng, n, d, c):
    f, y = data(rng, n, d, c)
    got = nleep(torch.from_numpy(f), torch.from_numpy(y), seed=1)
    assert got.dtype == torch.float64 and got.ndim == 0 and float(got) <= 1e-12
    scores, _ = pca_scores(torch.from_numpy(f), variance=0.8)
    assert scores.shape[1] == PCA(n_components=0.8, svd_solver="full").fit(f).n_components_
    fit = fit_gaussian_mixture(scores, min(5 * c, n // 2), seed=1)
    assert float(got) == pytest.approx(np_leep(fit.resp.numpy(), y), rel=1e-10)


def test_matches_sklearn_pipeline_on_clear_clusters(rng):
    """One component per well-separated class: every start finds the same mixture."""
    f, y = data(rng, 240, 6, 4, signal=8.0)
    p = PCA(n_components=0.8, svd_solver="full").fit_transform(f)
    theta = GaussianMixture(4, covariance_type="diag", random_state=0, tol=1e-10, max_iter=1000).fit(p).predict_proba(p)
    assert float(nleep(f, y, n_components=4)) == pytest.approx(np_leep(theta, y), abs=1e-8)


# ---------------------------------------------------------------- properties
def test_seeded_and_invariant(rng, rotation, rename):
    f, y = data(rng, 200, 6, 4, signal=1.0)
    base = float(nleep(f, y))
    assert float(nleep(f, y)) == base  # deterministic for a seed
    assert float(nleep(f, rename(rng, y))) == pytest.approx(base, rel=1e-12)
    # PCA absorbs translations and rotations (component signs do not affect distances)
    assert float(nleep(f @ rotation(rng, 6) + 4.0, y)) == pytest.approx(base, rel=1e-6)
    assert float(nleep(f, y, pca_variance=1.0)) <= 0


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    s = [float(nleep(noise + a * centres[y], y)) for a in (0.0, 1.0, 3.0, 8.0)]
    assert s == sorted(s) and s[-1] > -0.05 and s[0] < np.log(0.45)  # chance level is log(1/3)


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="features.*NaN"):
        nleep(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        nleep(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*21 entries"):
        nleep(f, np.arange(21) % 2)
    with pytest.raises(ValueError, match="n_components"):
        nleep(f, y, n_components=21)  # more components than samples
    with pytest.raises(ValueError, match="pca_variance"):
        nleep(f, y, pca_variance=0.0)
    with pytest.raises(ValueError, match="constant"):
        nleep(np.ones((20, 3)), y)
