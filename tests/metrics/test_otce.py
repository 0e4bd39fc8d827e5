"""OTCE against independent float64 references: numpy W_T/W_D, exact OT by scipy linprog."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from tguide.metrics.functional.otce import (
    OTCEConvergenceWarning,
    OTCEResult,
    fit_otce_weights,
    otce,
    otce_coupling,
    otce_sim,
)

# ----------------------------------------------------------------------------- references


def np_cost(xs: np.ndarray, xt: np.ndarray) -> np.ndarray:
    return ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1)


def np_conditional_entropy(pi: np.ndarray, ys: np.ndarray, yt: np.ndarray) -> float:
    """H(Y_t | Y_s) of the joint label law of coupling ``pi``, with loops, 0 log 0 = 0."""
    total = 0.0
    for a in np.unique(ys):
        p_a = pi[ys == a].sum()
        for b in np.unique(yt):
            p_ab = pi[np.ix_(ys == a, yt == b)].sum()
            if p_ab > 0:
                total -= p_ab * math.log(p_ab / p_a)
    return total


def linprog_coupling(cost: np.ndarray) -> np.ndarray:
    """Exact OT between uniform marginals as a linear program (HiGHS)."""
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))  # Σ_j π_ij = 1/n
    cols = np.kron(np.ones((1, n)), np.eye(m))  # Σ_i π_ij = 1/m
    a_eq = np.vstack([rows, cols])
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    assert res.status == 0, res.message
    return res.x.reshape(n, m)


def two_domains(rng: np.random.Generator, ns: int, nt: int, d: int = 3, cs: int = 3, ct: int = 2):
    xs = rng.normal(size=(ns, d))
    ys = rng.permutation(np.arange(ns) % cs)
    xt = rng.normal(size=(nt, d)) + 0.5
    yt = rng.permutation(np.arange(nt) % ct)
    return xs, ys, xt, yt


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("ns,nt,cs,ct", [(6, 8, 3, 2), (9, 5, 2, 3), (7, 7, 4, 4), (12, 10, 3, 5)])
def test_emd_matches_linprog(rng, ns, nt, cs, ct):
    xs, ys, xt, yt = two_domains(rng, ns, nt, cs=cs, ct=ct)
    r = otce(xs, ys, xt, yt, solver="emd")
    cost = np_cost(xs, xt)
    pi = linprog_coupling(cost)
    w_t = np_conditional_entropy(pi, ys, yt)
    w_d = float((pi * cost).sum())
    assert float(r.task_distance) == pytest.approx(w_t, rel=1e-8, abs=1e-12)
    assert float(r.domain_distance) == pytest.approx(w_d, rel=1e-8)
    assert float(r.score) == pytest.approx(-w_t, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_distances_match_numpy_on_the_returned_coupling(rng, solver):
    xs, ys, xt, yt = two_domains(rng, 30, 25, d=4, cs=4, ct=3)
    r = otce(xs, ys, xt, yt, solver=solver)
    pi = r.coupling.numpy()
    assert float(r.task_distance) == pytest.approx(np_conditional_entropy(pi, ys, yt), rel=1e-12)
    assert float(r.domain_distance) == pytest.approx(float((pi * np_cost(xs, xt)).sum()), rel=1e-10)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_coupling_marginals(rng, solver):
    xs, ys, xt, yt = two_domains(rng, 23, 17)
    pi = otce(xs, ys, xt, yt, solver=solver).coupling
    assert pi.shape == (23, 17) and pi.dtype == torch.float64
    assert bool((pi >= 0).all())
    np.testing.assert_allclose(pi.sum(1).numpy(), np.full(23, 1 / 23), atol=1e-9)
    np.testing.assert_allclose(pi.sum(0).numpy(), np.full(17, 1 / 17), atol=1e-9)


def test_result_type(rng):
    xs, ys, xt, yt = two_domains(rng, 8, 6)
    r = otce(torch.tensor(xs, dtype=torch.float32), ys, xt.astype(np.float32), yt)
    assert isinstance(r, OTCEResult)
    for t in (r.score, r.domain_distance, r.task_distance):
        assert t.dtype == torch.float64 and t.ndim == 0
    with pytest.raises(AttributeError):
        r.score = torch.tensor(0.0)  # frozen


# ----------------------------------------------------------------------------- properties


def test_identical_domains_with_bijective_labels_is_maximal(rng):
    x = rng.normal(size=(20, 5))
    y = np.arange(20) % 4
    perm = rng.permutation(20)
    mapped = np.array([7, -3, 11, 5])[y]  # a bijection of the classes
    same = otce_sim(x, y, x[perm], mapped[perm])
    assert float(same) == pytest.approx(0.0, abs=1e-12)
    other = otce_sim(x, y, x[perm], rng.permutation(mapped)[perm])  # labels shuffled: not a function of y_s
    assert float(other) < -1e-3


def test_single_source_class_gives_target_entropy(rng):
    xs, _, xt, _ = two_domains(rng, 10, 9)
    yt = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    p = np.bincount(yt) / yt.size
    r = otce(xs, np.full(10, 3), xt, yt)
    assert float(r.task_distance) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_label_renaming_and_sample_order_invariance(rng, rename, solver):
    xs, ys, xt, yt = two_domains(rng, 15, 12, cs=3, ct=3)
    ref = otce(xs, ys, xt, yt, solver=solver)
    ps, pt = rng.permutation(15), rng.permutation(12)
    r = otce(xs[ps], rename(rng, ys)[ps], xt[pt], rename(rng, yt)[pt], solver=solver)
    assert float(r.task_distance) == pytest.approx(float(ref.task_distance), rel=1e-8, abs=1e-10)
    assert float(r.domain_distance) == pytest.approx(float(ref.domain_distance), rel=1e-8)
    np.testing.assert_allclose(r.coupling.numpy(), ref.coupling.numpy()[np.ix_(ps, pt)], atol=1e-9)


def test_sinkhorn_reg_is_relative_to_the_cost_scale(rng):
    xs, ys, xt, yt = two_domains(rng, 12, 10)
    a = otce(xs, ys, xt, yt, solver="sinkhorn", reg=0.1)
    b = otce(10 * xs, ys, 10 * xt, yt, solver="sinkhorn", reg=0.1)
    np.testing.assert_allclose(b.coupling.numpy(), a.coupling.numpy(), atol=1e-10)
    assert float(b.domain_distance) == pytest.approx(100 * float(a.domain_distance), rel=1e-8)


def test_sinkhorn_tends_to_emd_as_reg_goes_to_zero(rng):
    xs, ys, xt, yt = two_domains(rng, 12, 10)
    exact = otce(xs, ys, xt, yt, solver="emd")
    gaps = []
    for reg in (1e-1, 1e-2, 2e-3):
        r = otce(xs, ys, xt, yt, solver="sinkhorn", reg=reg, max_iter=50_000)
        gaps.append(float((r.coupling - exact.coupling).abs().sum()))  # L1 distance of the couplings (≤ 2)
        last = r
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05 * gaps[0]
    assert float(last.domain_distance) == pytest.approx(float(exact.domain_distance), rel=2e-4)
    assert float(last.task_distance) == pytest.approx(float(exact.task_distance), abs=1e-4)


def test_weights_give_the_linear_score(rng):
    xs, ys, xt, yt = two_domains(rng, 10, 10)
    plain = otce(xs, ys, xt, yt)
    r = otce(xs, ys, xt, yt, weights=(0.3, -2.0, 0.9))
    assert float(r.task_distance) == float(plain.task_distance)
    assert float(r.domain_distance) == float(plain.domain_distance)
    cost = np_cost(xs, xt)
    pi = linprog_coupling(cost)
    expected = 0.3 * (pi * cost).sum() - 2.0 * np_conditional_entropy(pi, ys, yt) + 0.9
    assert float(r.score) == pytest.approx(expected, rel=1e-8)


def test_max_samples_caps_each_side_reproducibly(rng):
    xs, ys, xt, yt = two_domains(rng, 40, 30)
    full = otce(xs, ys, xt, yt)
    assert float(otce(xs, ys, xt, yt, max_samples=40).task_distance) == float(full.task_distance)
    a = otce(xs, ys, xt, yt, max_samples=12, seed=3)
    b = otce(xs, ys, xt, yt, max_samples=12, seed=3)
    c = otce(xs, ys, xt, yt, max_samples=12, seed=4)
    assert a.coupling.shape == (12, 12)
    assert torch.equal(a.coupling, b.coupling) and float(a.task_distance) == float(b.task_distance)
    assert float(a.domain_distance) != float(c.domain_distance)


def test_sinkhorn_gradient_flows_through_the_coupling(rng):
    xs, ys, xt, yt = two_domains(rng, 10, 8, d=3)
    xt_t = torch.tensor(xt)

    def w_t(x: torch.Tensor) -> torch.Tensor:
        return otce(x, ys, xt_t, yt, solver="sinkhorn", reg=0.1).task_distance

    x = torch.tensor(xs, requires_grad=True)
    (grad,) = torch.autograd.grad(w_t(x), x)
    assert float(grad.abs().max()) > 1e-4
    h = 1e-5
    fd = np.zeros_like(xs)
    with torch.no_grad():
        for i in range(xs.shape[0]):
            for j in range(xs.shape[1]):
                e = torch.zeros_like(x)
                e[i, j] = h
                fd[i, j] = float(w_t(x + e) - w_t(x - e)) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-3, atol=1e-5 * np.abs(fd).max())


def test_emd_task_distance_has_no_gradient_but_domain_distance_does(rng):
    xs, ys, xt, yt = two_domains(rng, 6, 5)
    x = torch.tensor(xs, requires_grad=True)
    r = otce(x, ys, xt, yt, solver="emd")
    (g,) = torch.autograd.grad(r.domain_distance, x)
    # envelope theorem: d/dx_s Σ π C = Σ_j π_ij 2 (x_s^i - x_t^j) with π fixed
    pi = r.coupling.numpy()
    expected = 2 * (pi.sum(1)[:, None] * xs - pi @ xt)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert not r.task_distance.requires_grad


# ----------------------------------------------------------------------------- weights fit


def test_fit_otce_weights_recovers_known_lambdas(rng):
    w_d = rng.uniform(1, 5, size=12)
    w_t = rng.uniform(0, 1.5, size=12)
    acc = -0.07 * w_d - 0.4 * w_t + 0.95
    lam = fit_otce_weights(w_d, w_t, acc)
    assert isinstance(lam, tuple) and all(isinstance(v, float) for v in lam)
    np.testing.assert_allclose(lam, (-0.07, -0.4, 0.95), rtol=1e-10)
    noisy = fit_otce_weights(torch.tensor(w_d), list(w_t), acc + rng.normal(scale=1e-4, size=12))
    np.testing.assert_allclose(noisy, (-0.07, -0.4, 0.95), atol=5e-3)


def test_fit_otce_weights_errors():
    with pytest.raises(ValueError, match="at least 3 auxiliary tasks"):
        fit_otce_weights([1.0, 2.0], [0.1, 0.2], [0.5, 0.6])
    with pytest.raises(ValueError, match="one entry per auxiliary task"):
        fit_otce_weights([1.0, 2.0, 3.0], [0.1, 0.2], [0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match="`accuracies` contains NaN"):
        fit_otce_weights([1.0, 2.0, 3.0], [0.1, 0.2, 0.4], [0.5, float("nan"), 0.7])
    with pytest.raises(ValueError, match="collinear or constant"):
        fit_otce_weights([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], [0.5, 0.6, 0.7, 0.9])
    with pytest.raises(ValueError, match="1-D"):
        fit_otce_weights(np.ones((3, 2)), [0.1, 0.2, 0.4], [0.5, 0.6, 0.7])


# ----------------------------------------------------------------------------- errors


def test_input_errors(rng):
    xs, ys, xt, yt = two_domains(rng, 8, 6)
    with pytest.raises(ValueError, match="3 dimensions but `target_features` have 2"):
        otce(xs, ys, xt[:, :2], yt)
    bad = xs.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="`source_features` contains 1 NaN"):
        otce(bad, ys, xt, yt)
    with pytest.raises(ValueError, match="`target_labels` has 1 distinct class"):
        otce(xs, ys, xt, np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="`source_labels` has 7 entries but the features have 8 rows"):
        otce(xs, ys[:7], xt, yt)
    with pytest.raises(ValueError, match="`target_features` must be 2-D"):
        otce(xs, ys, xt[:, 0], yt)
    with pytest.raises(ValueError, match="`solver` must be one of"):
        otce(xs, ys, xt, yt, solver="greenkhorn")
    with pytest.raises(ValueError, match="`reg` must be a positive"):
        otce(xs, ys, xt, yt, solver="sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="`weights` must be three"):
        otce(xs, ys, xt, yt, weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="`max_samples` must be an integer"):
        otce(xs, ys, xt, yt, max_samples=1)
    with pytest.raises(ValueError, match="`source_features` is empty"):
        otce(np.zeros((0, 3)), [], xt, yt)


def test_solver_iteration_limit_warns(rng):
    xs, ys, xt, yt = two_domains(rng, 20, 20)
    with pytest.warns(OTCEConvergenceWarning, match="not optimal") as record:
        otce(xs, ys, xt, yt, solver="emd", max_iter=2)
    assert record[0].filename == __file__  # points at the caller, not into the library
    with pytest.warns(OTCEConvergenceWarning, match="Sinkhorn did not reach"):
        otce(xs, ys, xt, yt, solver="sinkhorn", reg=1e-3, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        otce(xs, ys, xt, yt, solver="sinkhorn")  # converges silently at the defaults


def test_otce_coupling_checks_its_cost(rng):
    with pytest.raises(ValueError, match="`cost` has negative entries"):
        otce_coupling(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="`cost` contains 1 NaN"):
        otce_coupling(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    cost = np_cost(rng.normal(size=(5, 2)), rng.normal(size=(4, 2)))
    np.testing.assert_allclose(otce_coupling(torch.tensor(cost)).numpy(), linprog_coupling(cost), atol=1e-9)
