"""NCTI against sklearn's PCA + LDA pipeline, the authors' code, the pool normalisation, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from tguide.metrics.functional.ncti import NCTITerms, ncti, ncti_pool, ncti_terms, pca_scores

SHAPES = [  # (N, D, C, scale): scale 0.1-0.2 gives the shrinkage ("eigen") LDA, 1.0 the "svd" LDA
    (200, 10, 4, 1.0),
    (200, 10, 4, 0.2),
    (60, 100, 3, 0.1),  # D > N, PCA keeps N-1 = 59 components
    (60, 100, 3, 1.0),  # D > N with a singular within-class scatter (57 dof in 59 dims)
    (300, 80, 5, 1.0),  # PCA to 64
    (40, 5, 2, 3.0),
]


def np_ncti(x, y, pca_dim=64):
    """sklearn's PCA and LDA, the nuclear norms of numpy; the solver switch of the authors."""
    y = np.unique(y, return_inverse=True)[1]
    c = y.max() + 1  # y is 0..C-1 after the remap above
    k = min(pca_dim, x.shape[1], x.shape[0] - 1)
    pca = PCA(n_components=k, svd_solver="full")
    xp = pca.fit_transform(x)
    s = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if s == 1e-10:
        lda = LinearDiscriminantAnalysis(solver="svd")
    else:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=s)
    low = lda.fit_transform(xp, y)
    low -= low.mean(0)
    p = lda.predict_proba(xp)
    return (
        np.linalg.norm(low, ord="nuc"),
        np.log(sum(np.linalg.norm(p[y == k], ord="nuc") for k in range(c))),
        p[np.arange(len(y)), y].mean(),
    )


def data(rng, n, d, c, scale, signal=0.7):
    y = rng.permutation(np.arange(n) % c)
    return scale * (signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))), y


def as_floats(t: NCTITerms) -> tuple[float, float, float]:
    return float(t.separability), float(t.class_variance), float(t.nearest_centre)


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize("n,d,c,scale", SHAPES)
def test_matches_sklearn_pipeline(rng, n, d, c, scale):
    f, y = data(rng, n, d, c, scale)
    t = ncti_terms(torch.from_numpy(f), torch.from_numpy(y))
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in (t.separability, t.class_variance, t.nearest_centre))
    np.testing.assert_allclose(as_floats(t), np_ncti(f, y), rtol=1e-8)
    assert float(ncti(f, y)) == pytest.approx(as_floats(t)[0] - as_floats(t)[1] + as_floats(t)[2], rel=1e-12)


def ref_data_wide(scale):
    rng = np.random.default_rng(7)
    y = np.arange(150) % 3
    f = 0.15 * rng.normal(size=(3, 70))[y] + rng.normal(size=(150, 70))
    return scale * f, y


@pytest.mark.parametrize(
    "scale,expected",
    # Provenance: BUserName/NCTI @ b18d39514a3f, metrics.NCTI_Score(ref_data_wide(scale)) run with
    # scikit-learn 1.9.1 (returns separability, nearest-centre, class-variance). scale 0.05 takes
    # the shrinkage LDA (s ≈ 0.92), scale 1.0 the svd LDA (s at the 1e-10 floor).
    [
        (0.05, (30.997568260760744, 0.6996394554120119, 3.2235076873416)),
        (1.0, (38.52302310705528, 0.8299635974194234, 3.2384444809448105)),
    ],
)
def test_authors_reference_values(scale, expected):
    t = ncti_terms(*ref_data_wide(scale))
    np.testing.assert_allclose(
        (float(t.separability), float(t.nearest_centre), float(t.class_variance)), expected, rtol=1e-9
    )


@pytest.mark.parametrize("n,d", [(50, 8), (20, 40)])
def test_pca_scores_match_sklearn(rng, n, d):
    f = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d)
    s, var = pca_scores(torch.from_numpy(f), 5)
    pca = PCA(n_components=5, svd_solver="full").fit(f)
    np.testing.assert_allclose(var.numpy(), pca.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(s.numpy()), np.abs(pca.transform(f)), rtol=1e-7, atol=1e-9)
    s8, _ = pca_scores(torch.from_numpy(f), variance=0.8)
    assert s8.shape[1] == PCA(n_components=0.8, svd_solver="full").fit(f).n_components_


# ---------------------------------------------------------------- pool
def test_pool_min_max():
    terms = [
        NCTITerms(*(torch.tensor(v, dtype=torch.float64) for v in row))
        for row in [(10.0, 3.0, 0.5), (30.0, 2.0, 0.9), (20.0, 4.0, 0.7)]
    ]
    got = ncti_pool(terms)
    # by hand: sep (0, 1, .5) + ncc (0, 1, .5) - vc (.5, 0, 1)
    np.testing.assert_allclose(got.numpy(), [-0.5, 2.0, 0.0], atol=1e-12)
    single = ncti_pool(terms[:1])  # one model: every term constant, contributes 0
    assert single.shape == (1,) and float(single[0]) == 0.0
    with pytest.raises(ValueError, match="terms"):
        ncti_pool([])


# ---------------------------------------------------------------- properties
def test_invariances(rng, rotation, rename):
    for scale in (0.1, 1.0):  # both LDA solvers
        f, y = data(rng, 150, 8, 4, scale)
        base = as_floats(ncti_terms(f, y))
        perm = rng.permutation(len(y))
        np.testing.assert_allclose(as_floats(ncti_terms(f, rename(rng, y))), base, rtol=1e-9)
        np.testing.assert_allclose(as_floats(ncti_terms(f[perm], y[perm])), base, rtol=1e-9)
        np.testing.assert_allclose(as_floats(ncti_terms(f + 3.0 * rng.normal(size=8), y)), base, rtol=1e-8)
        np.testing.assert_allclose(as_floats(ncti_terms(f @ rotation(rng, 8), y)), base, rtol=1e-8)


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 10))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 10))
    terms = [ncti_terms(noise + s * centres[y], y) for s in (0.1, 0.6, 1.5, 4.0)]
    raw = [float(t.separability - t.class_variance + t.nearest_centre) for t in terms]
    assert raw == sorted(raw)
    sep, ncc = [float(t.separability) for t in terms], [float(t.nearest_centre) for t in terms]
    assert sep == sorted(sep) and ncc == sorted(ncc)
    # the class-variance term is not monotone: near-uniform posteriors (heavy overlap) have a
    # small nuclear norm too, so the pooled score need only put the separated model first
    pooled = ncti_pool(terms).numpy()
    assert int(np.argmax(pooled)) == len(terms) - 1 and pooled[-1] > pooled[0]


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="features.*NaN/Inf"):
        ncti_terms(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        ncti_terms(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*21 entries"):
        ncti_terms(f, np.arange(21) % 2)
    with pytest.raises(ValueError, match="more samples than classes"):  # N = C
        ncti_terms(f[:5], np.arange(5))
    with pytest.raises(ValueError, match="pca_dim"):
        ncti_terms(f, y, pca_dim=0)
