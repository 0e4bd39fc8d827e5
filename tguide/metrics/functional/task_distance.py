r"""OTCE's task distance: the conditional entropy of the labels under a coupling, and its null.

Given a coupling π between source and target samples (from :mod:`tguide.metrics.functional.otce`), the
joint label law is :math:`\hat P(y_s, y_t) = \sum_{i: y_s^i = y_s, j: y_t^j = y_t} \pi_{ij}` and
the task distance is :math:`W_T = H(Y_t \mid Y_s)`. This module holds that table, its plug-in
entropy, the Miller–Madow bias term, and W_T for many permutations of the target labels from
one coupling (the label-shuffle null of :mod:`tguide.metrics.null`).

References:
    [1] Y. Tan, Y. Li, S.-L. Huang, "OTCE: A Transferability Metric for Cross-Domain
        Cross-Task Representations", CVPR 2021.
    [2] G. A. Miller, "Note on the bias of information estimates", in Information Theory in
        Psychology, Free Press, 1955.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["task_distance", "joint_labels", "miller_madow_correction", "task_distance_null"]


def task_distance(coupling: Tensor, source_codes: Tensor, cs: int, target_codes: Tensor, ct: int) -> Tensor:
    r"""Conditional entropy :math:`W_T = H(Y_t \mid Y_s)` of the coupling's joint label law.

    .. math::
        \hat P(y_s, y_t) = \sum_{i: y_s^i = y_s,\; j: y_t^j = y_t} \pi_{ij}, \quad
        \hat P(y_s) = \sum_{y_t} \hat P(y_s, y_t), \quad
        W_T = -\sum_{y_s, y_t} \hat P(y_s, y_t) \log \frac{\hat P(y_s, y_t)}{\hat P(y_s)}

    with :math:`0 \log 0 = 0`. Two ``index_add`` reductions, no loop over classes;
    differentiable w.r.t. ``coupling`` (zero cells get zero gradient, not NaN).

    Args:
        coupling: ``(Ns, Nt)`` joint distribution of the samples.
        source_codes: ``(Ns,)`` source classes ``0..cs-1``; target_codes: ``(Nt,)`` in ``0..ct-1``.
    """
    joint = joint_labels(coupling, source_codes, cs, target_codes, ct)
    marg = joint.sum(dim=1)  # (Cs,): P̂(y_s)
    return _plogp(marg).sum() - _plogp(joint).sum()


def _plogp(p: Tensor) -> Tensor:
    """``p log p`` elementwise with ``0 log 0 = 0`` (and a zero, not NaN, gradient at 0)."""
    pos = p > 0
    return torch.where(pos, p * torch.log(torch.where(pos, p, torch.ones_like(p))), torch.zeros_like(p))


def joint_labels(coupling: Tensor, source_codes: Tensor, cs: int, target_codes: Tensor, ct: int) -> Tensor:
    """The coupling's joint label law ``P̂(y_s, y_t)``, ``(Cs, Ct)``: two ``index_add`` reductions."""
    rows = torch.zeros(cs, coupling.shape[1], dtype=coupling.dtype, device=coupling.device)
    rows = rows.index_add(0, source_codes, coupling)  # (Cs, Nt)
    joint = torch.zeros(cs, ct, dtype=coupling.dtype, device=coupling.device)
    return joint.index_add(1, target_codes, rows)  # (Cs, Ct)


def miller_madow_correction(joint: Tensor, n: int) -> Tensor:
    r"""Miller–Madow bias term of the plug-in conditional entropy ``H(Y_t|Y_s)`` of ``joint``.

    The plug-in entropy of ``m`` occupied cells from ``n`` samples is low by about
    ``(m − 1)/(2n)`` (Miller 1955); for ``H(Y_t|Y_s) = H(Y_s, Y_t) − H(Y_s)`` the term is

    .. math:: \frac{m_{st} - m_s}{2n}

    with ``m_st`` the occupied cells of the joint and ``m_s`` the occupied source classes. It
    assumes each cell holds many samples; with ~Cs·Ct cells and few samples per cell it
    under-corrects (use the label-shuffle ``"null"`` correction there).
    """
    m_joint = int((joint.detach() > 0).sum())
    m_src = int((joint.detach().sum(dim=1) > 0).sum())
    return torch.tensor((m_joint - m_src) / (2.0 * n), dtype=joint.dtype, device=joint.device)


def task_distance_null(
    coupling: Tensor, source_codes: Tensor, cs: int, target_codes: Tensor, ct: int, perms: Tensor
) -> Tensor:
    r"""``W_T`` for every permutation of the target labels, reusing one coupling: ``(P,)``.

    Row ``p`` of ``perms (P, Nt)`` relabels target sample ``j`` with ``target_codes[perms[p, j]]``.
    The coupling depends on the features only, so shuffling the labels only re-tabulates
    ``P̂(y_s, y_t)``: the coupling is first summed over source classes into ``(Cs, Nt)``, and
    every permutation's joint table is one weighted ``bincount`` over that matrix's non-zero
    entries (a sparse exact coupling has at most ``Ns + Nt − 1`` of them). The source
    marginal does not change under target shuffles. A dense coupling (Sinkhorn) uses one
    ``(Cs, Nt) @ (Nt, b·Ct)`` product per block of permutations instead.
    """
    plan = coupling.detach()
    rows = torch.zeros(cs, plan.shape[1], dtype=plan.dtype, device=plan.device).index_add_(0, source_codes, plan)
    src_term = _plogp(rows.sum(dim=1)).sum()
    s_idx, t_idx = torch.nonzero(rows > 0, as_tuple=True)  # K entries
    weights = rows[s_idx, t_idx]  # (K,)
    k = int(weights.numel())
    out = torch.empty(perms.shape[0], dtype=plan.dtype, device=plan.device)
    cells = cs * ct
    if k > 8 * (cs + plan.shape[1]):  # a dense coupling (Sinkhorn): one matmul per block instead
        chunk = max(1, 2_000_000 // (plan.shape[1] * ct))
        for start in range(0, perms.shape[0], chunk):
            block = target_codes[perms[start : start + chunk].to(plan.device)]  # (b, Nt)
            b = block.shape[0]
            onehot = torch.nn.functional.one_hot(block.T, ct).to(plan.dtype).reshape(plan.shape[1], b * ct)
            joint = (rows @ onehot).view(cs, b, ct).transpose(0, 1)  # (b, Cs, Ct)
            out[start : start + b] = src_term - _plogp(joint).sum(dim=(1, 2))
        return out
    chunk = max(1, 4_000_000 // max(k, 1))
    for start in range(0, perms.shape[0], chunk):
        block = perms[start : start + chunk].to(plan.device)  # (b, Nt)
        b = block.shape[0]
        labels = target_codes[block][:, t_idx]  # (b, K): permuted label of each entry's target sample
        flat = (s_idx[None, :] * ct + labels) + (torch.arange(b, device=plan.device) * cells)[:, None]
        joint = torch.bincount(flat.flatten(), weights=weights.repeat(b), minlength=b * cells).view(b, cells)
        out[start : start + b] = src_term - _plogp(joint).sum(dim=1)
    return out
