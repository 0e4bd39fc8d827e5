"""OTCE's entropic coupling against independent references.

1. POT's own ``ot.sinkhorn`` called on numpy arrays with a cost matrix computed in numpy;
2. the optimality conditions of entropic OT, checked directly: the solution of
   min <π, C> + ε Σ π log π over Π(a, b) is the unique π with those marginals and
   log π_ij + C_ij / ε = f_i + g_j (additively separable), whatever solver produced it.
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from tguide.metrics.functional.otce import otce_coupling


def _problem(seed: int, ns: int = 30, nt: int = 25, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, xt = rng.normal(size=(ns, d)), rng.normal(loc=0.5, size=(nt, d))
    cost = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1)  # squared Euclidean, numpy
    return xs, cost


@pytest.mark.parametrize("seed,reg", [(0, 0.05), (1, 0.2), (2, 0.5)])
def test_sinkhorn_coupling_matches_pot_on_numpy(seed: int, reg: float) -> None:
    _, cost = _problem(seed)
    ns, nt = cost.shape
    eps = reg * cost.mean()  # tguide's ε is relative to the mean cost
    ref = ot.sinkhorn(np.full(ns, 1 / ns), np.full(nt, 1 / nt), cost, eps, method="sinkhorn_log",
                      numItermax=20000, stopThr=1e-12)
    pi = otce_coupling(torch.from_numpy(cost), solver="sinkhorn", reg=reg, tol=1e-12).numpy()
    assert np.abs(pi - ref).max() < 1e-9


@pytest.mark.parametrize("reg", [0.05, 0.3])
def test_sinkhorn_coupling_satisfies_the_optimality_conditions(reg: float) -> None:
    _, cost = _problem(7, ns=20, nt=35)
    ns, nt = cost.shape
    eps = reg * cost.mean()
    pi = otce_coupling(torch.from_numpy(cost), solver="sinkhorn", reg=reg, tol=1e-12).numpy()
    assert np.allclose(pi.sum(1), 1 / ns, atol=1e-10) and np.allclose(pi.sum(0), 1 / nt, atol=1e-10)
    L = np.log(pi) + cost / eps  # must be f_i + g_j
    resid = L - L[:, :1] - L[:1, :] + L[0, 0]
    assert np.abs(resid).max() < 1e-6


def test_emd_coupling_is_optimal_against_a_linear_program() -> None:
    from scipy.optimize import linprog

    _, cost = _problem(3, ns=8, nt=6)
    ns, nt = cost.shape
    a_eq = np.zeros((ns + nt, ns * nt))
    for i in range(ns):
        a_eq[i, i * nt:(i + 1) * nt] = 1
    for j in range(nt):
        a_eq[ns + j, j::nt] = 1
    b_eq = np.concatenate([np.full(ns, 1 / ns), np.full(nt, 1 / nt)])
    lp = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    pi = otce_coupling(torch.from_numpy(cost), solver="emd").numpy()
    assert float((pi * cost).sum()) == pytest.approx(lp.fun, rel=1e-9)
