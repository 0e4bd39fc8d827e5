"""LogME against brute-force maximisations of the evidence written here, the D > N term, errors.

Two independent references:
* ``brute_max_explicit``: the evidence L(α, β) of the docstring evaluated with explicit
  D×D matrices (``solve``, ``slogdet``), maximised with scipy over (log α, log β);
* ``profile_max``: the same quantity written as the Gaussian marginal likelihood
  log N(y; 0, s(I + ρFFᵀ)), with s profiled out in closed form and a 1-D search over ρ
  (it reaches the edges ρ → 0 and ρ → ∞ where the fixed point diverges).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from tguide.metrics.functional.logme import LogMEConvergenceWarning, LogMEUnboundedWarning, logme

LOG2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- references
def np_evidence(log_a: float, log_b: float, f: np.ndarray, y: np.ndarray, drop_term: bool = False) -> float:
    """L(α, β) with explicit D×D matrices; ``drop_term`` reproduces the truncated log det."""
    a, b = math.exp(log_a), math.exp(log_b)
    n, d = f.shape
    a_mat = a * np.eye(d) + b * f.T @ f
    m = b * np.linalg.solve(a_mat, f.T @ y)
    if drop_term:  # Σ over the min(N, D) singular values only, as in the widely used code
        logdet = float(np.sum(np.log(a + b * np.linalg.svd(f, compute_uv=False) ** 2)))
    else:
        logdet = np.linalg.slogdet(a_mat)[1]
    return (
        n / 2 * log_b + d / 2 * log_a - n / 2 * LOG2PI
        - b / 2 * np.sum((f @ m - y) ** 2) - a / 2 * m @ m - logdet / 2
    )


def brute_max_explicit(f, y, drop_term=False, box=30.0):
    """max over (log α, log β) ∈ [-box, box]² of np_evidence; returns (value, argmax)."""

    def fun(p):
        return -np_evidence(p[0], p[1], f, y, drop_term)

    starts = [(0.0, 0.0), (8.0, 8.0), (-8.0, 2.0)]
    runs = [minimize(fun, x0, method="L-BFGS-B", bounds=[(-box, box)] * 2, options=dict(ftol=1e-15, gtol=1e-10))
            for x0 in starts]
    best = min(runs, key=lambda r: r.fun)
    polish = minimize(fun, best.x, method="Nelder-Mead", bounds=[(-box, box)] * 2,
                      options=dict(xatol=1e-9, fatol=1e-13, maxiter=4000))
    if polish.fun < best.fun:
        best = polish
    return -best.fun, best.x


@functools.lru_cache(maxsize=8)
def _svd_cached(key: bytes, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.frombuffer(key, dtype=np.float64).reshape(n, d)
    u, sv, _ = np.linalg.svd(f, full_matrices=True)
    lam = np.zeros(n)
    lam[: sv.size] = sv**2
    return u, lam


def _svd_full(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full left singular basis U (N×N) and λ = σ² padded with zeros to length N."""
    f = np.ascontiguousarray(f, dtype=np.float64)
    return _svd_cached(f.tobytes(), *f.shape)


def profile_max(f: np.ndarray, y: np.ndarray, bound: float = 60.0) -> tuple[float, float]:
    """max over s > 0 and log ρ ∈ [-bound, bound] of log N(y; 0, s (I_N + ρ F Fᵀ)).

    For fixed ρ the best s is ``mean(z_i² / (1 + ρλ_i))`` (z = Uᵀy, λ_i = σ_i², 0 past the
    rank). Returns (value, log ρ at the maximum); ρ = β/α.
    """
    n = f.shape[0]
    u, lam = _svd_full(f)
    z2 = (u.T @ y) ** 2

    def neg_profile(log_rho):
        w = 1.0 + np.exp(np.asarray(log_rho, dtype=np.float64))[..., None] * lam  # (..., N)
        s = np.sum(z2 / w, axis=-1) / n
        return 0.5 * (n * (LOG2PI + np.log(s) + 1.0) + np.sum(np.log(w), axis=-1))

    grid = np.linspace(-bound, bound, 1601)
    vals = neg_profile(grid)
    k = int(np.argmin(vals))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    r = minimize_scalar(lambda t: float(neg_profile(t)), bounds=(lo, hi), method="bounded",
                        options=dict(xatol=1e-12))
    if r.fun < vals[k]:
        return -float(r.fun), float(r.x)
    return -float(vals[k]), float(grid[k])


def reference(f, y, method):
    per_class = []
    for label in np.unique(y):
        target = (y == label).astype(np.float64)
        per_class.append(brute_max_explicit(f, target)[0] if method == "explicit" else profile_max(f, target)[0])
    return float(np.mean(per_class)) / f.shape[0]


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def data(rng, n, d, c, scale=1.0, signal=1.0):
    y = rng.permutation(np.arange(n) % c)
    f = rng.normal(size=(n, d))
    f[:, 0] += signal * y
    return scale * f, y


def quiet_logme(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cases below must converge without a warning
        return logme(*args, **kwargs)


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize(
    "n,d,c,scale",
    [(60, 8, 3, 1.0), (60, 8, 3, 1e-3), (60, 8, 3, 1e3), (20, 50, 3, 1.0), (25, 60, 4, 10.0), (30, 30, 2, 1.0)],
)
def test_matches_explicit_brute_force(rng, n, d, c, scale):
    f, y = data(rng, n, d, c, scale)
    got = quiet_logme(torch.from_numpy(f), torch.from_numpy(y))
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), reference(f, y, "explicit")) <= 1e-6


@pytest.mark.parametrize(
    "n,d,c,signal",
    [(200, 10, 4, 1.0), (60, 100, 3, 1.0), (300, 20, 100, 0.05), (50, 50, 5, 1.0), (40, 5, 2, 0.0),
     (100, 300, 20, 0.5)],  # the last: the plain fixed point from α = β = 1 is not done in 10⁴ steps
)
def test_matches_profile_likelihood(rng, n, d, c, signal):
    f, y = data(rng, n, d, c, signal=signal)
    assert rel_err(float(quiet_logme(f, y)), reference(f, y, "profile")) <= 1e-6


def test_noise_free_edge(rng):
    """N < D and features that carry the labels: the supremum is at β = ∞ (no noise)."""
    n, d, c = 20, 40, 3
    y = np.arange(n) % c
    f = np.concatenate([5 * np.eye(c)[y], 0.01 * rng.normal(size=(n, d - c))], axis=1)
    assert rel_err(float(quiet_logme(f, y)), reference(f, y, "profile")) <= 1e-6


def test_uninformative_class_edge():
    """Features useless for a class: the supremum is at α = ∞ (ρ = β/α → 0, weights at 0)."""
    rng = np.random.default_rng(7)
    n = 200
    y = rng.permutation(np.arange(n) % 2)
    f = rng.normal(size=(n, 3))
    at_edge = [profile_max(f, (y == k).astype(np.float64))[1] for k in (0, 1)]
    assert min(at_edge) < -20.0  # the reference's maximiser runs to the edge ρ → 0
    assert rel_err(float(quiet_logme(f, y)), reference(f, y, "profile")) <= 1e-6


@pytest.mark.parametrize("c", [1e-8, 1e-3, 1e4])
def test_scale_invariance(rng, c):
    """N(y; 0, β⁻¹I + α⁻¹FFᵀ) at (α c², β) for cF equals it at (α, β) for F: same maximum."""
    for n, d in [(80, 6), (20, 40)]:
        f, y = data(rng, n, d, 3)
        assert float(quiet_logme(c * f, y)) == pytest.approx(float(quiet_logme(f, y)), rel=1e-9)


# ---------------------------------------------------------------- the (D − r) log α term
def test_dropping_the_log_alpha_term_is_wrong_for_d_greater_than_n(rng):
    n, d = 20, 50
    f, y = data(rng, n, d, 3)
    target = (y == 0).astype(np.float64)
    full_value, (log_a, log_b) = brute_max_explicit(f, target)
    ours = float(quiet_logme(f, (y == 0).astype(int)))  # two classes: the class and the rest
    rest_value, _ = brute_max_explicit(f, 1.0 - target)
    assert rel_err(ours, (full_value + rest_value) / 2 / n) <= 1e-6
    # at the true optimum the truncated objective differs by (D−N)/2·log α, not a constant...
    truncated_at_opt = np_evidence(log_a, log_b, f, target, drop_term=True)
    assert truncated_at_opt - full_value == pytest.approx((d - n) / 2 * log_a, rel=1e-6, abs=1e-9)
    assert abs(truncated_at_opt - full_value) > 1e-2 * n
    # ...so its maximiser is elsewhere: it grows without bound in α and sits on the box edge
    for box in (20.0, 30.0):
        trunc_value, (log_a_tr, _) = brute_max_explicit(f, target, drop_term=True, box=box)
        assert log_a_tr == pytest.approx(box, abs=1e-3)
        assert trunc_value > full_value + 0.5
    assert brute_max_explicit(f, target, drop_term=True, box=30.0)[0] > brute_max_explicit(
        f, target, drop_term=True, box=20.0
    )[0] + 1.0


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("n,d,c", [(150, 12, 5), (40, 60, 4)])
def test_invariances(rng, rotation, rename, n, d, c):
    f, y = data(rng, n, d, c)
    base = float(quiet_logme(f, y))
    perm = rng.permutation(n)
    assert float(quiet_logme(f, rename(rng, y))) == pytest.approx(base, rel=1e-9)
    assert float(quiet_logme(f[perm], y[perm])) == pytest.approx(base, rel=1e-9)
    assert float(quiet_logme(f @ rotation(rng, d), y)) == pytest.approx(base, rel=1e-8)


def test_informative_features_score_higher(rng):
    y = rng.permutation(np.arange(120) % 3)
    noise = rng.normal(size=(120, 6))
    assert float(quiet_logme(noise + 2 * np.eye(3)[y] @ rng.normal(size=(3, 6)), y)) > float(quiet_logme(noise, y))


def test_max_iter_warns():
    rng = np.random.default_rng(0)
    f, y = data(rng, 60, 8, 3)
    with pytest.warns(LogMEConvergenceWarning, match=r"did not converge in max_iter=3"):
        value = logme(f, y, tol=1e-300, max_iter=3)  # a change below 1e-300 is out of reach
    assert math.isfinite(float(value))


def test_exact_linear_fit_warns_and_stays_finite(rng):
    n, c = 60, 3
    y = np.arange(n) % c
    f = np.concatenate([np.eye(c)[y], 0.01 * rng.normal(size=(n, 5))], axis=1)  # labels leak, N > D
    with pytest.warns(LogMEUnboundedWarning, match=r"exact linear function of the features"):
        value = logme(f, y)
    assert math.isfinite(float(value))


def test_errors(rng):
    f, y = data(rng, 12, 3, 3)
    bad = f.copy()
    bad[5, 2] = -np.inf
    with pytest.raises(ValueError, match=r"`features` contains 1 NaN/Inf"):
        logme(bad, y)
    with pytest.raises(ValueError, match=r"`features` must be 2-D"):
        logme(f[None], y)
    with pytest.raises(ValueError, match=r"`labels` has 10 entries but the features have 12 rows"):
        logme(f, y[:10])
    with pytest.raises(ValueError, match=r"`labels` has 1 distinct class"):
        logme(f, np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match=r"`features` is empty"):
        logme(np.zeros((0, 3)), np.zeros(0, dtype=int))
    for tol in (0.0, -1.0, float("nan"), "small"):
        with pytest.raises(ValueError, match=r"`tol` must be a positive finite float"):
            logme(f, y, tol=tol)
    for max_iter in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=r"`max_iter` must be a positive integer"):
            logme(f, y, max_iter=max_iter)
