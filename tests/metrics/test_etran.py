"""ETran against numpy/sklearn references, the authors' code, the pool weights, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from tguide.metrics.functional.etran import ETranTerms, etran, etran_pool, etran_terms

SHAPES = [(400, 10, 4, 0.3), (60, 100, 3, 0.1), (300, 20, 6, 2.0)]  # (N, D, C, scale); D > N included


def data(rng, n, d, c, scale, signal=0.7):
    y = rng.permutation(np.arange(n) % c)
    return scale * (signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))), y


def np_energy(f, fraction=0.005, tail="bottom"):
    e = np.sort(logsumexp(f, axis=1))
    m = max(1, int(np.floor(fraction * len(e) + 1e-9)))
    return e[:m].mean() if tail == "bottom" else e[-m:].mean()


def np_lda_shrinkage(f, y):
    """Mean true-class posterior of sklearn's eigen LDA with λ = max(exp(-5 σ_max(S_w)), 1e-10)."""
    y = np.unique(y, return_inverse=True)[1]
    pri = np.bincount(y) / len(y)
    sw = sum(pri[k] * np.atleast_2d(np.cov(f[y == k].T, bias=True)) for k in range(y.max() + 1))
    lam = max(np.exp(-5 * np.linalg.eigvalsh(sw).max()), 1e-10)
    p = LinearDiscriminantAnalysis(solver="eigen", shrinkage=lam).fit(f, y).predict_proba(f)
    return p[np.arange(len(y)), y].mean()


def np_lda_reference_code(f, y):
    """The authors' LDA_Score as it computes: identity-covariance Gaussian posterior."""
    y = np.unique(y, return_inverse=True)[1]
    c = y.max() + 1  # y is 0..C-1 after the remap above
    means = np.stack([f[y == k].mean(0) for k in range(c)])
    logits = f @ means.T - 0.5 * (means**2).sum(1) + np.log(np.bincount(y) / len(y))
    return softmax(logits, axis=1)[np.arange(len(y)), y].mean()


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize("n,d,c,scale", SHAPES)
def test_matches_numpy(rng, n, d, c, scale):
    f, y = data(rng, n, d, c, scale)
    t = etran_terms(torch.from_numpy(f), torch.from_numpy(y))
    assert t.energy.dtype == torch.float64 and t.energy.ndim == 0 and t.lda.ndim == 0
    assert float(t.energy) == pytest.approx(np_energy(f), rel=1e-12)
    assert float(t.lda) == pytest.approx(np_lda_shrinkage(f, y), rel=1e-8)
    r = etran_terms(f, y, reference_code=True)
    assert float(r.lda) == pytest.approx(np_lda_reference_code(f, y), rel=1e-9)
    assert float(r.energy) == float(t.energy)
    for frac, tail in [(0.1, "top"), (1.0, "bottom"), (0.25, "bottom")]:
        got = etran_terms(f, y, energy_fraction=frac, energy_tail=tail).energy
        assert float(got) == pytest.approx(np_energy(f, frac, tail), rel=1e-12)
    assert float(etran(f, y)) == pytest.approx(float(t.energy + t.lda), rel=1e-12)


def ref_data(scale):
    rng = np.random.default_rng(7)
    y = np.arange(120) % 3
    f = rng.normal(size=(3, 6))[y] + rng.normal(size=(120, 6))
    return scale * f, y


@pytest.mark.parametrize(
    "scale,lda,energy",
    # Provenance: mgholamikn/ETran @ d4551ed8f41f, metrics.LDA_Score(ref_data(scale)) and
    # metrics.Energy_Score(two stacked copies of ref_data(scale) features, 0.5, 'bot') (240 rows,
    # so that its 0.5 % keeps one sample), run with numpy/torch of this venv.
    [(0.3, 0.40138033537771, 1.3609128557919452), (3.0, 0.8112607698381435, -1.554358658525338)],
)
def test_authors_reference_values(scale, lda, energy):
    f, y = ref_data(scale)
    assert float(etran_terms(f, y, reference_code=True).lda) == pytest.approx(lda, rel=1e-10)
    stacked = np.concatenate([f, f])
    assert float(etran_terms(stacked, np.concatenate([y, y])).energy) == pytest.approx(energy, rel=1e-12)


# ---------------------------------------------------------------- pool
def test_pool_weights():
    terms = [ETranTerms(torch.tensor(e, dtype=torch.float64), torch.tensor(l, dtype=torch.float64))
             for e, l in [(1.0, 0.2), (3.0, 0.6), (2.0, 1.0)]]
    # by hand: energy (0, 1, .5), lda (0, .5, 1)
    np.testing.assert_allclose(etran_pool(terms).numpy(), [0.0, 0.15 + 0.425, 0.075 + 0.85], atol=1e-12)
    np.testing.assert_allclose(etran_pool(terms, weights=(1, 1)).numpy(), [0.0, 1.5, 1.5], atol=1e-12)
    assert float(etran_pool(terms[:1])[0]) == 0.0
    with pytest.raises(ValueError, match="terms"):
        etran_pool([])


# ---------------------------------------------------------------- properties
def test_invariances(rng, rotation, rename):
    f, y = data(rng, 200, 8, 4, 0.5)
    base = etran_terms(f, y)
    perm = rng.permutation(len(y))
    for other in (etran_terms(f, rename(rng, y)), etran_terms(f[perm], y[perm])):
        assert float(other.energy) == pytest.approx(float(base.energy), rel=1e-12)
        assert float(other.lda) == pytest.approx(float(base.lda), rel=1e-10)
    # the LDA term is translation and rotation invariant; the energy term is not (raw logits)
    moved = etran_terms(f @ rotation(rng, 8) + 2.0, y)
    assert float(moved.lda) == pytest.approx(float(base.lda), rel=1e-8)
    assert float(moved.energy) != pytest.approx(float(base.energy), rel=1e-3)
    assert float(etran_terms(f + 1.0, y).energy) == pytest.approx(float(base.energy) + 1.0, rel=1e-12)


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    for reference_code in (False, True):
        lda = [
            float(etran_terms(noise + s * centres[y], y, reference_code=reference_code).lda)
            for s in (0.0, 0.5, 1.5, 4.0)
        ]
        assert lda == sorted(lda) and lda[-1] > 0.9


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="features.*NaN"):
        etran_terms(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        etran_terms(f, np.ones(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*18 entries"):
        etran_terms(f, y[:18])
    with pytest.raises(ValueError, match="within-class variance"):  # N = C
        etran_terms(f[:3], np.arange(3))
    with pytest.raises(ValueError, match="energy_fraction"):
        etran_terms(f, y, energy_fraction=0.0)
    with pytest.raises(ValueError, match="energy_tail"):
        etran_terms(f, y, energy_tail="low")
