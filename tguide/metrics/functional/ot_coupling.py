"""Optimal-transport couplings for OTCE: the squared-Euclidean cost and the exact / entropic solvers.

:func:`otce_coupling` solves for the coupling π between two uniform empirical distributions
(exact OT, or Sinkhorn's entropic OT with a scale-free strength) through POT; the score built
from π (W_D, W_T and their combination) is :mod:`tguide.metrics.functional.otce`.

References:
    [1] Y. Tan, Y. Li, S.-L. Huang, "OTCE: A Transferability Metric for Cross-Domain
        Cross-Task Representations", CVPR 2021.
    [2] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
        NeurIPS 2013.
    [3] R. Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021 (the solvers).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from tguide._warnings import stacklevel_outside
from tguide.metrics._validate import check_features

__all__ = ["SOLVERS", "OTCEConvergenceWarning", "otce_coupling", "squared_euclidean"]

SOLVERS = ("emd", "sinkhorn")
_INT32_MAX = 2**31 - 1


class OTCEConvergenceWarning(RuntimeWarning):
    """The OT solver stopped at its iteration limit: the coupling is feasible but not optimal."""


def _check_solver_options(solver: str, reg: float, max_iter: int | None, tol: float) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
    if isinstance(reg, bool) or not isinstance(reg, numbers.Real) or not (math.isfinite(reg) and reg > 0):
        raise ValueError(
            f"`reg` must be a positive finite float (entropic strength relative to the mean cost), got {reg!r}."
        )
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1
    ):
        raise ValueError(f"`max_iter` must be a positive integer or None (solver default), got {max_iter!r}.")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"`tol` must be a positive finite float (Sinkhorn marginal error), got {tol!r}.")


def squared_euclidean(xs: Tensor, xt: Tensor) -> Tensor:
    r"""Cost matrix :math:`C_{ij} = \lVert x_s^i - x_t^j \rVert^2`, ``(Ns, Nt)``, one allocation.

    Computed as ``‖x‖² + ‖y‖² − 2 x yᵀ`` (one ``addmm``) and clamped at 0 against
    round-off; in place when no gradient is needed.
    """
    c = torch.addmm((xs * xs).sum(1)[:, None] + (xt * xt).sum(1)[None, :], xs, xt.T, beta=1.0, alpha=-2.0)
    if c.requires_grad:
        return c.clamp(min=0.0)
    return c.clamp_(min=0.0)


def otce_coupling(
    cost: Tensor,
    *,
    solver: str = "emd",
    reg: float = 0.05,
    max_iter: int | None = None,
    tol: float = 1e-9,
) -> Tensor:
    r"""Optimal coupling between uniform marginals for a cost matrix, through POT.

    ``"emd"``: exact OT, :math:`\pi = \arg\min_{\pi \in \Pi(a, b)} \langle \pi, C\rangle`
    (network simplex, ``ot.emd``, on the CPU). ``"sinkhorn"``: entropic OT
    :math:`\arg\min_\pi \langle \pi, C\rangle + \varepsilon \sum_{ij}\pi_{ij}\log\pi_{ij}`
    with ``ot.sinkhorn(method="sinkhorn_log")`` on the cost's device, and
    :math:`\varepsilon = \mathrm{reg}\cdot\overline{C}` (the mean cost), so ``reg`` is
    scale-free: scaling all features by ``s`` leaves the coupling unchanged. The
    Sinkhorn iterations run in torch, so the coupling is differentiable w.r.t. ``cost``
    (autograd unrolls them: memory ≈ 2·Ns·Nt floats per iteration while a gradient is
    recorded).

    Args:
        cost: ``(Ns, Nt)`` float64 cost matrix.
        solver: ``"emd"`` or ``"sinkhorn"``.
        reg: entropic strength relative to the mean cost (Sinkhorn only).
        max_iter: iteration limit; ``None`` = ``max(10⁶, 10·Ns·Nt)`` network-simplex
            iterations (capped at 2³¹−1) for ``emd``, 10 000 for ``sinkhorn``.
        tol: Sinkhorn stopping threshold on the L2 error of the target marginal.

    Returns:
        ``(Ns, Nt)`` float64 coupling with rows summing to ``1/Ns`` and columns to ``1/Nt``.

    Warns:
        OTCEConvergenceWarning: the solver hit ``max_iter`` (coupling feasible for
            ``emd`` but not optimal; marginals off by more than ``tol`` for Sinkhorn).

    Raises:
        ValueError: a cost that is not a finite, non-negative 2-D matrix; bad options.
    """
    _check_solver_options(solver, reg, max_iter, tol)
    cost = check_features(cost, "cost")
    if bool((cost.detach() < 0).any()):
        raise ValueError("`cost` has negative entries; pass a cost such as squared distances (≥ 0).")
    return _coupling(cost, solver, reg, max_iter, tol)


def _coupling(cost: Tensor, solver: str, reg: float, max_iter: int | None, tol: float) -> Tensor:
    """:func:`otce_coupling` without the input checks (the caller made ``cost``)."""
    ns, nt = cost.shape
    a = torch.full((ns,), 1.0 / ns, dtype=cost.dtype, device=cost.device)
    b = torch.full((nt,), 1.0 / nt, dtype=cost.dtype, device=cost.device)
    import ot  # POT is imported on first use, so that `import tguide.metrics` stays light

    problem = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if solver == "emd":
            n_iter = max_iter if max_iter is not None else min(_INT32_MAX, max(1_000_000, 10 * ns * nt))
            plan, log = ot.emd(a, b, cost.detach(), numItermax=int(n_iter), log=True)
            if int(log["result_code"]) != 1:
                problem = (
                    f"exact OT (ot.emd) stopped with status {log['warning']!r} after max_iter={n_iter}; "
                    "the coupling is feasible but not optimal. Raise `max_iter`, subsample with "
                    "`max_samples`, or use solver='sinkhorn'."
                )
        else:
            scale = cost.mean()
            eps = reg * (scale if float(scale.detach()) > 0 else torch.ones_like(scale))
            n_iter = max_iter if max_iter is not None else 10_000
            plan = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=int(n_iter), stopThr=tol)
            if any("did not converge" in str(w.message) for w in caught):
                problem = (
                    f"Sinkhorn did not reach tol={tol:g} in max_iter={n_iter} iterations (reg={reg:g} "
                    "relative to the mean cost); raise `max_iter`, raise `reg`, or use solver='emd'."
                )
    for w in caught:  # pass on what POT said, except the convergence notes translated below
        text = str(w.message)
        if problem is not None and ("numItermax" in text or "did not converge" in text):
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if problem is not None:
        # the user's line: past otce/otce_sim/otce_coupling and any library caller (null, stateful)
        warnings.warn(problem, OTCEConvergenceWarning, stacklevel=stacklevel_outside("tguide.metrics"))
    return plan
