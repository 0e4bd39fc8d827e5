"""SFDA against an independent numpy transcription, sklearn's LDA, the authors' code, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from tguide.metrics.functional.sfda import regularised_lda_log_proba, sfda

SHAPES = [  # (N, D, C, scale): small scales keep λ = exp(-5 σ_max) above its 1e-10 floor
    (200, 10, 4, 1.0),
    (200, 10, 4, 0.2),
    (60, 100, 3, 0.1),  # D > N: the N×N route, λ ≈ 0.3
    (500, 20, 10, 0.3),
    (40, 3, 2, 2.0),
]


# ---------------------------------------------------------------- numpy reference
def np_lda_proba(x, y, c, lam=None, power=False):
    """Regularised LDA of Shao et al.: D×D matrices, scipy's generalised eigh, full V Vᵀ."""
    n, d = x.shape
    pri = np.bincount(y, minlength=c) / n
    means = np.stack([x[y == k].mean(0) for k in range(c)])
    sw = sum(pri[k] * np.atleast_2d(np.cov(x[y == k].T, bias=True)) for k in range(c))
    if lam is None:
        if power:  # three power steps from S_w 1 (the authors' iterative_A)
            v = sw.sum(1)
            for _ in range(3):
                t = sw @ v
                u = t / np.linalg.norm(t)
                t = sw @ u
                v = t / np.linalg.norm(t)
            top = v @ sw @ u
        else:
            top = np.linalg.eigvalsh(sw).max()
        lam = max(np.exp(-5 * top), 1e-10)
    sws = (1 - lam) * sw + lam * np.trace(sw) / d * np.eye(d)
    st = np.atleast_2d(np.cov(x.T, bias=True))
    sts = (1 - lam) * st + lam * np.trace(st) / d * np.eye(d)
    _, vec = linalg.eigh(sts - sws, sws)
    coef = means @ vec @ vec.T
    logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(pri)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), lam


def np_sfda(x, y, power=False):
    y = np.unique(y, return_inverse=True)[1]
    c = y.max() + 1  # y is 0..C-1 after the remap above
    p, lam = np_lda_proba(x, y, c, power=power)
    q = np.exp(p) / np.exp(p).sum(1, keepdims=True)
    means = np.stack([x[y == k].mean(0) for k in range(c)])
    mixed = x.copy()
    for k in range(c):
        other = np.delete(means, k, axis=0).mean(0)
        w = q[y == k, k][:, None]
        mixed[y == k] = w * x[y == k] + (1 - w) * other
    p2, _ = np_lda_proba(mixed, y, c, lam=lam)
    return p2[np.arange(len(y)), y].mean()


def data(rng, n, d, c, scale, signal=0.7):
    y = rng.permutation(np.arange(n) % c)
    return scale * (signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))), y


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize("n,d,c,scale", SHAPES)
@pytest.mark.parametrize("power", [False, True])
def test_matches_numpy(rng, n, d, c, scale, power):
    f, y = data(rng, n, d, c, scale)
    got = sfda(torch.from_numpy(f), torch.from_numpy(y), power_iterations=3 if power else None)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(np_sfda(f, y, power), rel=1e-8)


@pytest.mark.parametrize("n,d,c,scale", SHAPES)
def test_lda_posterior_is_sklearn_eigen_lda(rng, n, d, c, scale):
    """The first SFDA fit is sklearn's eigen-solver LDA with the same (float) shrinkage."""
    f, y = data(rng, n, d, c, scale)
    x = torch.from_numpy(f)
    log_p, lam = regularised_lda_log_proba(x, torch.from_numpy(y), c)
    ref = LinearDiscriminantAnalysis(solver="eigen", shrinkage=lam).fit(f, y).predict_proba(f)
    np.testing.assert_allclose(log_p.exp().numpy(), ref, rtol=1e-6, atol=1e-9)


def ref_data(scale):
    rng = np.random.default_rng(7)
    y = np.arange(120) % 3
    f = rng.normal(size=(3, 6))[y] + rng.normal(size=(120, 6))
    return scale * f, y


@pytest.mark.parametrize(
    "scale,expected",
    # Provenance: TencentARC/SFDA @ 3b7edf76bd68, metrics.SFDA_Score(ref_data(scale)) run with
    # numpy/scipy/scikit-learn of this venv (3 power-iteration steps for σ_max, as in that code).
    [(0.3, 0.5250495395881585), (1.0, 0.5146255422318041), (3.0, 0.5145925532756046)],
)
def test_authors_reference_values(scale, expected):
    f, y = ref_data(scale)
    assert float(sfda(f, y, power_iterations=3)) == pytest.approx(expected, rel=1e-10)


def test_exact_and_power_agree_at_the_floor():
    f, y = ref_data(3.0)  # σ_max(S_w) ≈ 9: λ = 1e-10 with either estimate
    assert float(sfda(f, y)) == pytest.approx(float(sfda(f, y, power_iterations=3)), rel=1e-12)


# ---------------------------------------------------------------- properties
def test_invariances(rng, rotation, rename):
    f, y = data(rng, 150, 8, 4, 0.4)
    base = float(sfda(f, y))
    assert 0 < base <= 1
    perm = rng.permutation(len(y))
    assert float(sfda(f, rename(rng, y))) == pytest.approx(base, rel=1e-10)
    assert float(sfda(f[perm], y[perm])) == pytest.approx(base, rel=1e-10)
    assert float(sfda(f + 5.0 * rng.normal(size=8), y)) == pytest.approx(base, rel=1e-8)
    assert float(sfda(f @ rotation(rng, 8), y)) == pytest.approx(base, rel=1e-8)


def test_not_scale_invariant_but_deterministic(rng):
    f, y = data(rng, 150, 8, 4, 0.4)
    assert float(sfda(f, y)) == float(sfda(f, y, seed=123))  # no randomness
    assert float(sfda(f, y)) != pytest.approx(float(sfda(10 * f, y)), rel=1e-6)  # λ depends on scale


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    scores = [float(sfda(noise + s * centres[y], y)) for s in (0.0, 0.5, 1.5, 4.0)]
    assert scores == sorted(scores) and scores[-1] > 0.9 and scores[0] < 0.5


def test_float32_and_numpy_input(rng):
    f, y = data(rng, 100, 5, 3, 0.5)
    a = sfda(torch.from_numpy(f).float(), torch.from_numpy(y))
    assert a.dtype == torch.float64
    assert float(a) == pytest.approx(float(sfda(f.astype(np.float32), y)), rel=1e-12)


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="features.*NaN"):
        sfda(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        sfda(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*19 entries"):
        sfda(f, y[:19])
    with pytest.raises(ValueError, match="2-D"):
        sfda(f[:, 0], y)
    with pytest.raises(ValueError, match="within-class variance"):  # N = C: every class one point
        sfda(f[:4], np.arange(4))
    with pytest.raises(ValueError, match="power_iterations"):
        sfda(f, y, power_iterations=0)
