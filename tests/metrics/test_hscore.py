"""H-score and shrinkage H-score against independent numpy formulas, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics.functional.hscore import hscore, hscore_shrinkage, ledoit_wolf_shrinkage

SHAPES = [  # (N, D, C)
    (200, 10, 4),
    (60, 100, 3),  # D > N: the N×N Gram route
    (50, 50, 5),  # D = N
    (500, 20, 100),  # many classes, 5 samples each
    (120, 7, 2),
]


# ---------------------------------------------------------------- numpy references
def np_between_cov(f: np.ndarray, y: np.ndarray, ddof: int = 0) -> np.ndarray:
    """cov(E[f|y]) over N − ddof: the covariance of each sample replaced by its class mean."""
    g = np.empty_like(f)
    for label in np.unique(y):
        g[y == label] = f[y == label].mean(axis=0)
    return np.cov(g, rowvar=False, ddof=ddof)


def np_hscore(f: np.ndarray, y: np.ndarray) -> float:
    cov_f = np.cov(f, rowvar=False, bias=True).reshape(f.shape[1], f.shape[1])
    cov_g = np_between_cov(f, y).reshape(f.shape[1], f.shape[1])
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def np_ledoit_wolf(f: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), Lemmas 3.2-3.4, written with per-sample outer products."""
    n, d = f.shape
    x = f - f.mean(axis=0)
    s = x.T @ x / n
    m = np.trace(s) / d
    d2 = np.sum((s - m * np.eye(d)) ** 2) / d
    outer = np.einsum("ni,nj->nij", x, x)  # (N, D, D)
    b2_bar = np.sum((outer - s) ** 2) / d / n**2
    b2 = min(b2_bar, d2)
    alpha = b2 / d2
    return (1 - alpha) * s + alpha * m * np.eye(d), alpha


def np_hscore_shrinkage(f: np.ndarray, y: np.ndarray, ddof: int = 1) -> float:
    """The listing's convention by default: Σ_LW from the 1/N covariance, cov(E[f|y]) over N − 1."""
    sigma, alpha = np_ledoit_wolf(f)
    return float(np.trace(np.linalg.pinv(sigma, hermitian=True) @ ((1 - alpha) * np_between_cov(f, y, ddof))))


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize("n,d,c", SHAPES)
def test_hscore_matches_numpy(rng, make_data, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.5)
    got = hscore(torch.from_numpy(f), torch.from_numpy(y))
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), np_hscore(f, y)) <= 1e-6


@pytest.mark.parametrize("n,d,c", SHAPES)
def test_hscore_shrinkage_matches_numpy(rng, make_data, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.5)
    got = hscore_shrinkage(f, y)  # numpy input
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), np_hscore_shrinkage(f, y)) <= 1e-6


@pytest.mark.parametrize("n,d", [(200, 10), (60, 100), (30, 3)])
def test_ledoit_wolf_shrinkage_matches_numpy(rng, n, d):
    f = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d)
    x = torch.from_numpy(f - f.mean(axis=0))
    assert rel_err(float(ledoit_wolf_shrinkage(x)), np_ledoit_wolf(f)[1]) <= 1e-10


@pytest.mark.parametrize("n,d,c", [(200, 10, 4), (60, 100, 3)])
def test_hscore_shrinkage_matches_sklearn(rng, make_data, n, d, c):
    covariance = pytest.importorskip("sklearn.covariance")
    f, y = make_data(rng, n, d, c, signal=0.5)
    lw = covariance.LedoitWolf().fit(f)
    ref = np.trace(np.linalg.pinv(lw.covariance_) @ ((1 - lw.shrinkage_) * np_between_cov(f, y, ddof=1)))
    assert rel_err(float(hscore_shrinkage(f, y)), float(ref)) <= 1e-6


# ---------------------------------------------------------------- the published listing's convention
# Ibrahim, Ponomareva, Mazumder, "Newer is not always better: rethinking transferability metrics, their
# peculiarities, stability and performance", ECML PKDD 2022: the shrinkage H-score listing, as published in
# thuml/Transfer-Learning-Library, commit b0d863f20511e60fbc6f5491f37faf2765451cf7, path
# tllib/ranking/hscore.py, function `regularized_h_score` (read, not copied). Its convention: centre the
# features; Σ_LW and α from scikit-learn's LedoitWolf (the 1/N covariance); cov(E[f|y]) with numpy.cov's
# default N − 1; the score tr(pinv(Σ_LW, rcond=1e-15) · (1 − α) cov(E[f|y])).


def listing_hscore_shrinkage(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """That convention in plain numpy (the Ledoit-Wolf intensity written as scikit-learn computes it,
    from column sums of squares); returns ``(score, alpha)``."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0, keepdims=True)
    n, d = f.shape
    s = f.T @ f / n  # the 1/N covariance
    mu = np.trace(s) / d
    sq = f**2
    beta = (np.sum(sq.T @ sq) / n - np.sum(s**2)) / (d * n)
    delta = (np.sum(s**2) - 2 * mu * np.trace(s) + d * mu**2) / d
    alpha = 0.0 if min(beta, delta) == 0 else min(beta, delta) / delta
    sigma = (1 - alpha) * s + alpha * mu * np.eye(d)
    g = np.zeros_like(f)
    for label in np.unique(labels):
        g[labels == label] = f[labels == label].mean(axis=0)
    between = np.cov(g, rowvar=False)  # N − 1
    return float(np.trace(np.linalg.pinv(sigma, rcond=1e-15) @ ((1 - alpha) * between))), float(alpha)


def _listing_case() -> tuple[np.ndarray, np.ndarray]:
    """Seeded 300-sample case: 5 classes, 16 dimensions, unit class signal."""
    rng = np.random.default_rng(300)
    y = rng.permutation(np.arange(300) % 5)
    return rng.normal(size=(5, 16))[y] + rng.normal(size=(300, 16)), y


LISTING_REFERENCE = 2.6463942869492194  # listing_hscore_shrinkage(*_listing_case()) (numpy 2, float64)
ONE_OVER_N_REFERENCE = 2.6375729726593886  # the same with cov(E[f|y]) over N: LISTING_REFERENCE · 299/300


def test_hscore_shrinkage_follows_the_published_listing_by_default():
    f, y = _listing_case()
    ref, alpha = listing_hscore_shrinkage(f, y)
    assert 0.05 < alpha < 0.2  # a case where shrinkage matters
    assert ref == pytest.approx(LISTING_REFERENCE, rel=1e-12)
    assert float(hscore_shrinkage(f, y)) == pytest.approx(ref, rel=1e-12)
    assert float(hscore_shrinkage(f, y, between_ddof=1)) == pytest.approx(ref, rel=1e-12)


def test_hscore_shrinkage_between_ddof_0_is_the_one_over_n_variant():
    f, y = _listing_case()
    old = float(hscore_shrinkage(f, y, between_ddof=0))
    assert ONE_OVER_N_REFERENCE == pytest.approx(LISTING_REFERENCE * 299 / 300, rel=1e-14)
    assert old == pytest.approx(ONE_OVER_N_REFERENCE, rel=1e-12)
    assert old == pytest.approx(np_hscore_shrinkage(f, y, ddof=0), rel=1e-9)  # outer-product Ledoit-Wolf


@pytest.mark.parametrize("n,d,c", SHAPES)
def test_hscore_shrinkage_listing_agreement_across_shapes(rng, make_data, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.5)
    ref, _ = listing_hscore_shrinkage(f, y)
    assert rel_err(float(hscore_shrinkage(f, y)), ref) <= 1e-6
    assert rel_err(float(hscore_shrinkage(f, y, between_ddof=0)), ref * (n - 1) / n) <= 1e-6


@pytest.mark.parametrize("bad", [2, -1, 0.5, True])
def test_hscore_shrinkage_rejects_other_ddof(rng, make_data, bad):
    f, y = make_data(rng, 40, 3, 2)
    with pytest.raises(ValueError, match="between_ddof"):
        hscore_shrinkage(f, y, between_ddof=bad)


# ---------------------------------------------------------------- closed forms and bounds
@pytest.mark.parametrize("n,d,c", [(40, 10, 5), (40, 3, 10), (8, 20, 4)])
def test_hscore_separable_reaches_rank(rng, n, d, c):
    """Each class a single point: cov(f) = cov(E[f|y]), so H = tr(cov⁺cov) = rank(cov)."""
    y = rng.permutation(np.arange(n) % c)
    f = rng.normal(size=(c, d))[y]
    rank = np.linalg.matrix_rank(np.cov(f, rowvar=False, bias=True))
    assert rank == min(c - 1, d)
    assert float(hscore(f, y)) == pytest.approx(rank, rel=1e-9)


@pytest.mark.parametrize("n,d,c", [(30, 29, 4), (30, 80, 7), (12, 500, 3)])
def test_hscore_wide_features_is_c_minus_one(rng, make_data, n, d, c):
    """D ≥ N − 1: the centred rows span their whole space, every class mean is explained,
    tr(S⁺B) = Σ_c 1_cᵀ(I − 11ᵀ/N)1_c / n_c = C − 1 whatever the features (a known
    degeneracy of the H-score; the shrinkage variant stays informative)."""
    f, y = make_data(rng, n, d, c, signal=0.0)
    assert float(hscore(f, y)) == pytest.approx(c - 1, rel=1e-8)
    assert float(hscore_shrinkage(f, y)) < c - 1


@pytest.mark.parametrize("n,d,c", [(200, 10, 4), (60, 100, 3)])
def test_hscore_bounds(rng, make_data, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.3)
    rank = np.linalg.matrix_rank(np.cov(f, rowvar=False, bias=True))
    h, hs = float(hscore(f, y)), float(hscore_shrinkage(f, y))
    assert 0.0 <= h <= rank + 1e-9
    assert 0.0 <= hs <= h + 1e-9  # shrinking the covariance only adds to its eigenvalues


def test_more_signal_scores_higher(rng, make_data):
    y = rng.permutation(np.arange(300) % 3)
    noise = rng.normal(size=(300, 8))
    centres = rng.normal(size=(3, 8))
    weak, strong = noise + 0.2 * centres[y], noise + 2.0 * centres[y]
    assert float(hscore(strong, y)) > float(hscore(weak, y))
    assert float(hscore_shrinkage(strong, y)) > float(hscore_shrinkage(weak, y))


@pytest.mark.parametrize("fn", [hscore, hscore_shrinkage])
def test_constant_features_score_zero(fn):
    f = np.ones((10, 4))
    assert float(fn(f, np.arange(10) % 2)) == 0.0


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("fn", [hscore, hscore_shrinkage])
@pytest.mark.parametrize("n,d,c", [(150, 12, 5), (40, 60, 4)])
def test_invariances(fn, rng, make_data, rotation, rename, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.5)
    base = float(fn(f, y))
    perm = rng.permutation(n)
    assert float(fn(f, rename(rng, y))) == pytest.approx(base, rel=1e-10)
    assert float(fn(f[perm], y[perm])) == pytest.approx(base, rel=1e-10)
    assert float(fn(f @ rotation(rng, d), y)) == pytest.approx(base, rel=1e-8)
    assert float(fn(f + 7.5, y)) == pytest.approx(base, rel=1e-8)  # translation
    assert float(fn(3.0 * f, y)) == pytest.approx(base, rel=1e-8)  # scale


@pytest.mark.parametrize("fn", [hscore, hscore_shrinkage])
def test_input_types(fn, rng, make_data):
    f, y = make_data(rng, 80, 6, 3)
    ref = float(fn(f, y))
    assert float(fn(torch.tensor(f, dtype=torch.float32), torch.tensor(y))) == pytest.approx(ref, rel=1e-5)
    assert float(fn(f, y.astype(np.float64))) == pytest.approx(ref, rel=1e-12)  # integral floats
    assert float(fn(f, y[:, None])) == pytest.approx(ref, rel=1e-12)  # (N, 1) column


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [hscore, hscore_shrinkage])
def test_errors(fn, rng):
    f = rng.normal(size=(12, 3))
    y = np.arange(12) % 3
    bad = f.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"`features` contains 1 NaN/Inf"):
        fn(bad, y)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN/Inf"):
        fn(bad, y)
    with pytest.raises(ValueError, match=r"`features` must be 2-D.*x\[:, None\]"):
        fn(f[:, 0], y)
    with pytest.raises(ValueError, match=r"`features` must be 2-D.*flatten"):
        fn(f.reshape(12, 3, 1), y)
    with pytest.raises(ValueError, match=r"`labels` has 11 entries but the features have 12 rows"):
        fn(f, y[:-1])
    with pytest.raises(ValueError, match=r"`labels` has 1 distinct class"):
        fn(f, np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match=r"`features` is empty"):
        fn(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"non-integer"):
        fn(f, y + 0.5)
    with pytest.raises(ValueError, match=r"argmax"):
        fn(f, np.eye(3)[y])  # one-hot labels


@pytest.mark.parametrize("between_ddof", [0, 1])
def test_hscore_shrinkage_class_takes_the_convention_flag(between_ddof):
    from tguide.metrics import HScoreShrinkage

    g = torch.Generator().manual_seed(3)
    f = torch.randn(120, 6, generator=g, dtype=torch.float64)
    y = torch.arange(120) % 4
    f = f + y[:, None].double()
    metric = HScoreShrinkage(between_ddof=between_ddof)
    for fb, yb in zip(f.split(50), y.split(50)):
        metric.update(fb, yb)
    assert float(metric.compute()) == pytest.approx(float(hscore_shrinkage(f, y, between_ddof=between_ddof)), rel=1e-9)
    other = float(hscore_shrinkage(f, y, between_ddof=1 - between_ddof))
    assert float(metric.compute()) != pytest.approx(other, rel=1e-6)  # the flag changes the value (factor N/(N-1))
