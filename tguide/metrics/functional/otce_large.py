"""OTCE at large N: entropic OT through POT's lazy Sinkhorn, memory linear in the samples.

:func:`otce_large` is :func:`~tguide.metrics.functional.otce.otce` with ``solver="sinkhorn"``
(same ``reg``, same relative entropic scale ``ε = reg · mean(C)``) without ever forming the
``Ns × Nt`` cost or coupling: POT's ``ot.bregman.empirical_sinkhorn(..., isLazy=True)``
(log-domain Sinkhorn, cost recomputed block by block) returns the dual potentials ``f, g``,
and the coupling ``π_ij = exp(f_i + g_j − C_ij/ε)`` is rebuilt one block of source rows at a
time to accumulate

.. math::
    W_D = \\sum_{ij} \\pi_{ij} C_{ij}, \\qquad
    \\hat P(y_s, y_t) = \\sum_{i: y_s^i = y_s} \\big(\\pi_{i,:}\\, Y_t\\big)_{y_t}

(``Y_t`` the one-hot target labels), from which ``W_T = H(Y_t | Y_s)``. Memory: the features,
the potentials and one ``(block, Nt)`` block: O((Ns + Nt)·D + block·Nt). Time: every Sinkhorn
iteration recomputes the cost, O(Ns·Nt·D) (POT's lazy solver runs in numpy on the CPU). The
first call pins glibc's mmap threshold (:func:`release_large_blocks_to_os`) so that the freed
per-iteration blocks go back to the system and the resident memory stays linear in N.

References:
    [1] Y. Tan, Y. Li, S.-L. Huang, "OTCE: A Transferability Metric for Cross-Domain
        Cross-Task Representations", CVPR 2021.
    [2] J. Feydy et al. / POT: R. Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021
        (``ot.bregman.empirical_sinkhorn``).
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tguide._warnings import stacklevel_outside
from tguide.metrics._validate import check_labels
from tguide.metrics.functional.ot_coupling import OTCEConvergenceWarning, _check_solver_options, squared_euclidean
from tguide.metrics.functional.otce import OTCEResult, _check_weights, _prepare_features
from tguide.metrics.functional.task_distance import _plogp

__all__ = ["otce_large", "mean_squared_distance", "release_large_blocks_to_os"]

_BLOCK_ELEMENTS = 1 << 22  # entries of one (block, Nt) cost/coupling block: 32 MiB in float64
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_MMAP_THRESHOLD_BYTES = 1 << 20
_allocator_pinned = False


def release_large_blocks_to_os() -> bool:
    """Make glibc serve allocations of 1 MiB and more with ``mmap``, so that freeing them returns
    the memory to the system; returns whether the setting was applied.

    POT's lazy Sinkhorn allocates and frees a ``(batch, Nt)`` cost block at every iteration. Under
    glibc's default (a threshold that adapts upwards to the largest block freed so far) those
    blocks are served from the heap and kept after ``free``: the resident memory of a 10k × 10k
    run grows by +2 GB and of a 20k × 20k run by +7 GB although the live data stay at a few
    hundred MB. A fixed threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, the same as the
    environment variable ``MALLOC_MMAP_THRESHOLD_``) keeps the resident memory linear in N. It is
    process-wide and harmless for other code (large blocks cost one ``mmap`` each), applied once,
    and a no-op outside glibc.
    """
    global _allocator_pinned
    if _allocator_pinned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl or another libc: nothing to pin
        return False
    return _allocator_pinned


def mean_squared_distance(xs: Tensor, xt: Tensor) -> Tensor:
    """``mean_ij ‖xs_i − xt_j‖²`` in O((Ns + Nt)·D): ``mean‖xs‖² + mean‖xt‖² − 2 mean(xs)·mean(xt)``."""
    return (xs * xs).sum(1).mean() + (xt * xt).sum(1).mean() - 2 * torch.dot(xs.mean(0), xt.mean(0))


def otce_large(
    source_features: Any,
    source_labels: Any,
    target_features: Any,
    target_labels: Any,
    *,
    reg: float = 0.05,
    weights: Sequence[float] | None = None,
    max_iter: int | None = None,
    tol: float = 1e-9,
    batch_size: int | None = None,
) -> OTCEResult:
    r"""OTCE with entropic OT whose memory grows linearly in N (POT's lazy Sinkhorn).

    Same definition, inputs and result as :func:`~tguide.metrics.functional.otce.otce` with
    ``solver="sinkhorn"`` and the same ``reg`` (``ε = reg · mean C``, the mean cost computed
    exactly in O(N·D)), except that ``coupling`` is ``None`` (never materialised).

    Sample path: needs the samples themselves (the coupling between them).

    Args:
        source_features, source_labels, target_features, target_labels: as in ``otce``.
        reg: entropic strength relative to the mean cost.
        weights: ``(λ1, λ2, λ3)`` for the full OTCE score, or ``None`` for OTCE_sim.
        max_iter: Sinkhorn iterations (default 10 000).
        tol: stop when the L1 error of the source marginal is below ``tol`` (checked every
            10 iterations by POT); an :class:`OTCEConvergenceWarning` otherwise.
        batch_size: rows per block of the lazy cost (POT's ``batchSize``) and of the
            accumulation; default: blocks of about 4M entries.

    Returns:
        :class:`~tguide.metrics.functional.otce.OTCEResult` with ``coupling=None``.
    """
    import ot  # POT, imported on first use

    release_large_blocks_to_os()
    _check_solver_options("sinkhorn", reg, max_iter, tol)
    lam = _check_weights(weights)
    xs, xt = _prepare_features(source_features, target_features)
    ys, cs = check_labels(source_labels, xs.shape[0], "source_labels", min_classes=1)
    yt, ct = check_labels(target_labels, xt.shape[0], "target_labels", min_classes=2)
    xs, xt = xs.detach(), xt.detach()
    ys, yt = ys.to(xs.device), yt.to(xs.device)
    ns, nt = xs.shape[0], xt.shape[0]
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}.")
    bs = int(batch_size) if batch_size is not None else max(1, _BLOCK_ELEMENTS // max(ns, nt))

    scale = mean_squared_distance(xs, xt)
    eps = float(reg * (scale if float(scale) > 0 else torch.ones_like(scale)))
    a = torch.full((ns,), 1.0 / ns, dtype=xs.dtype, device=xs.device)
    b = torch.full((nt,), 1.0 / nt, dtype=xs.dtype, device=xs.device)
    n_iter = int(max_iter) if max_iter is not None else 10_000
    with warnings.catch_warnings():  # POT's own "did not converge" note: replaced by the warning below
        warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
        f, g, log = ot.bregman.empirical_sinkhorn(
            xs,
            xt,
            eps,
            a=a,
            b=b,
            metric="sqeuclidean",
            numIterMax=n_iter,
            stopThr=tol,
            isLazy=True,
            batchSize=bs,
            log=True,
        )
    errors = [float(e) for e in log.get("err", [])]
    if not errors or errors[-1] > tol:
        last = f"{errors[-1]:.3g}" if errors else "not measured"
        warnings.warn(
            f"lazy Sinkhorn did not reach tol={tol:g} in max_iter={n_iter} iterations (last marginal error "
            f"{last}; reg={reg:g} relative to the mean cost); raise `max_iter` or `reg`.",
            OTCEConvergenceWarning,
            stacklevel=stacklevel_outside("tguide.metrics"),
        )
    f = torch.as_tensor(f, dtype=xs.dtype, device=xs.device)
    g = torch.as_tensor(g, dtype=xs.dtype, device=xs.device)

    onehot_t = torch.nn.functional.one_hot(yt, ct).to(xs.dtype)  # (Nt, Ct)
    rows = max(1, _BLOCK_ELEMENTS // nt) if batch_size is None else bs
    w_d = torch.zeros((), dtype=xs.dtype, device=xs.device)
    joint = torch.zeros(cs, ct, dtype=xs.dtype, device=xs.device)
    for lo in range(0, ns, rows):
        cost = squared_euclidean(xs[lo : lo + rows], xt)  # (b, Nt)
        plan = torch.exp(f[lo : lo + rows, None] + g[None, :] - cost / eps)
        w_d += torch.dot(plan.reshape(-1), cost.reshape(-1))
        joint.index_add_(0, ys[lo : lo + rows], plan @ onehot_t)
    w_t = _plogp(joint.sum(dim=1)).sum() - _plogp(joint).sum()
    score = -w_t if lam is None else lam[0] * w_d + lam[1] * w_t + lam[2]
    return OTCEResult(score=score, domain_distance=w_d, task_distance=w_t, coupling=None)  # type: ignore[arg-type]
