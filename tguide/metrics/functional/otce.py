"""OTCE: transferability across domains and tasks from an optimal-transport coupling.

The source and target samples live in one feature space (the source model's). An
optimal coupling π between the two empirical distributions says which source samples
correspond to which target samples; its cost is the domain distance W_D and the
conditional entropy of the target labels given the source labels under π is the task
distance W_T. The cost and the solvers that give π are
:mod:`tguide.metrics.functional.ot_coupling` (``otce_coupling`` and ``squared_euclidean`` are
re-exported here).

References:
    [1] Y. Tan, Y. Li, S.-L. Huang, "OTCE: A Transferability Metric for Cross-Domain
        Cross-Task Representations", CVPR 2021.
    [2] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
        NeurIPS 2013.
    [3] R. Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021 (the solvers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tguide.metrics._subset import check_max_samples, stratified_subset
from tguide.metrics._validate import as_tensor, check_features, check_labels
from tguide.metrics.functional.ot_coupling import (
    OTCEConvergenceWarning,
    _check_solver_options,
    _coupling,
    otce_coupling,
    squared_euclidean,
)
from tguide.metrics.functional.permutation import NullCalibrated, calibrate, check_correction, label_permutations
from tguide.metrics.functional.task_distance import (
    _plogp,
    joint_labels,
    miller_madow_correction,
    task_distance,
    task_distance_null,
)

__all__ = [
    "OTCEResult",
    "OTCEConvergenceWarning",
    "otce",
    "otce_sim",
    "fit_otce_weights",
    "otce_coupling",
    "task_distance",
    "squared_euclidean",
    "joint_labels",
    "miller_madow_correction",
    "task_distance_null",
]


@dataclass(frozen=True)
class OTCEResult:
    """What :func:`otce` computes.

    Attributes:
        score: 0-d float64; ``-W_T`` (OTCE_sim), or ``λ1 W_D + λ2 W_T + λ3`` when
            ``weights`` were given. Higher = more transferable.
        domain_distance: 0-d float64, ``W_D = Σ_ij π_ij C_ij`` (squared-Euclidean cost).
        task_distance: 0-d float64, ``W_T = H(Y_t | Y_s)`` in nats.
        coupling: ``(Ns, Nt)`` float64 coupling π (rows of the subsets when
            ``max_samples`` subsampled), summing to 1.
        correction: the bias correction applied to W_T in the score (``"none"``,
            ``"null"``, ``"miller_madow"``).
        task_correction: 0-d float64 added to the plug-in ``task_distance`` before it enters
            the score (``None`` without a correction).
        null: the :class:`~tguide.metrics.functional.permutation.NullCalibrated` of the
            uncorrected score under label shuffling (``correction="null"`` only).
    """

    score: Tensor
    domain_distance: Tensor
    task_distance: Tensor
    coupling: Tensor
    correction: str = "none"
    task_correction: Tensor | None = None
    null: NullCalibrated | None = None


# ----------------------------------------------------------------------------- checks


def _check_weights(weights: Any) -> tuple[float, float, float] | None:
    if weights is None:
        return None
    try:
        w = tuple(float(v) for v in weights)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`weights` must be three numbers (λ1, λ2, λ3) or None, got {weights!r}; fit them with `fit_otce_weights`."
        ) from err
    if len(w) != 3 or not all(math.isfinite(v) for v in w):
        raise ValueError(
            f"`weights` must be three finite numbers (λ1, λ2, λ3) for λ1·W_D + λ2·W_T + λ3, got {weights!r}."
        )
    return w


def _prepare_features(source_features: Any, target_features: Any) -> tuple[Tensor, Tensor]:
    """Both feature matrices validated, float64, one feature space, one device."""
    xs = check_features(source_features, "source_features")  # (Ns, D)
    xt = check_features(target_features, "target_features")  # (Nt, D)
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"`source_features` have {xs.shape[1]} dimensions but `target_features` have {xt.shape[1]}; "
            "both sides must be features of the same layer (one feature space)."
        )
    if xs.device != xt.device:
        raise ValueError(
            f"`source_features` are on {xs.device} but `target_features` on {xt.device}; move both to one device."
        )
    return xs, xt


# ----------------------------------------------------------------------------- public


def otce(
    source_features: Any,
    source_labels: Any,
    target_features: Any,
    target_labels: Any,
    *,
    solver: str = "emd",
    reg: float = 0.05,
    weights: Sequence[float] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    tol: float = 1e-9,
    correction: str = "none",
    n_perm: int = 100,
) -> OTCEResult:
    r"""OTCE (Tan, Li, Huang, CVPR 2021 [1]): domain and task distance from an OT coupling.

    With source features :math:`x_s^i` (labels :math:`y_s^i`, ``i ≤ Ns``) and target
    features :math:`x_t^j` (labels :math:`y_t^j`, ``j ≤ Nt``) of one layer,

    .. math::
        C_{ij} = \lVert x_s^i - x_t^j \rVert_2^2, \qquad
        \pi = \arg\min_{\pi \in \Pi(\frac{1}{N_s}\mathbf 1, \frac{1}{N_t}\mathbf 1)} \langle \pi, C \rangle
        \;[+\, \varepsilon \textstyle\sum \pi\log\pi],

        W_D = \sum_{ij} \pi_{ij} C_{ij}, \qquad
        W_T = H(Y_t \mid Y_s) = -\sum_{y_s, y_t} \hat P(y_s, y_t)\log\frac{\hat P(y_s, y_t)}{\hat P(y_s)},

        \mathrm{score} = -W_T \;(\mathrm{OTCE_{sim}}) \quad\text{or}\quad
        \lambda_1 W_D + \lambda_2 W_T + \lambda_3 \;(\mathrm{OTCE}),

    with :math:`\hat P(y_s, y_t) = \sum_{i: y_s^i = y_s, j: y_t^j = y_t} \pi_{ij}`. The
    weights λ are fitted on auxiliary tasks with :func:`fit_otce_weights`. ``score ≤ 0``
    for OTCE_sim, ``= 0`` when every *source* class couples to a single target class (then Y_t
    is a function of Y_s), even when several source classes share one target class.

    The entropic scale is relative: :math:`\varepsilon = \mathrm{reg} \cdot \overline{C}`
    (mean cost), so ``reg`` does not depend on the scale of the features; ``reg → 0``
    recovers the exact coupling. Only ``solver="sinkhorn"`` is differentiable in the
    coupling (W_T gets a gradient w.r.t. the features through the Sinkhorn iterations;
    with ``"emd"`` only W_D has one, by the envelope theorem).

    Sample path: OTCE needs the samples themselves (an optimal-transport coupling between the
    source and target rows); it is not computed from sufficient statistics.

    Args:
        source_features: ``(Ns, D)`` source features.
        source_labels: ``(Ns,)`` source classes (any integers, one class allowed: then
            ``W_T = H(Y_t)``).
        target_features: ``(Nt, D)`` target features, same D.
        target_labels: ``(Nt,)`` target classes, at least 2.
        solver: ``"emd"`` (exact, network simplex; default) or ``"sinkhorn"`` (entropic,
            log domain; for large N and for gradients).
        reg: entropic strength relative to the mean cost (Sinkhorn only), default 0.05.
        weights: ``(λ1, λ2, λ3)`` for the full OTCE score, or ``None`` for OTCE_sim.
        max_samples: cap on each side; a larger side is replaced by a seeded,
            class-stratified random subset of that size
            (:func:`~tguide.metrics._subset.stratified_subset`: every class keeps at least
            one sample, the rest in proportion to the class sizes; source drawn with
            ``seed``, target with ``seed + 1``). The coupling then refers to the subsets.
            It must be at least the number of classes of each side.
        seed: seed of that subsampling and of the label permutations.
        max_iter, tol: solver limits, see :func:`otce_coupling`.
        correction: bias correction of the plug-in ``W_T`` used in the score.
            ``"none"`` (default): the paper's formula, so published numbers reproduce.
            ``"null"``: subtract the mean ``W_T`` of ``n_perm`` label-shuffled targets
            (one coupling, re-tabulated per permutation; :func:`task_distance_null`), so
            OTCE_sim becomes ``score − E_null[score]``: ≈ 0 when the source tells nothing
            about the target labels, > 0 when it does. Use it whenever source models with
            different numbers of classes are compared, or when Cs·Ct is not ≪ N (the
            plug-in ``H(Y_t|Y_s)`` is then biased low: a 242-class source looks
            transferable even to shuffled labels). ``"miller_madow"``: add
            ``(m_st − m_s)/(2 min(Ns, Nt))`` (:func:`miller_madow_correction`); cheap, but it
            under-corrects when cells hold few samples, and with Sinkhorn every cell is
            occupied (it then over-corrects): prefer ``"null"``.
        n_perm: permutations for ``correction="null"``.

    Returns:
        :class:`OTCEResult` (score, domain_distance, task_distance, coupling, correction,
        task_correction, null), float64 on the features' device. ``task_distance`` is
        always the plug-in ``W_T``; the score uses ``W_T + task_correction``.

    Raises:
        ValueError: different feature dimensions or devices, NaN/Inf, wrong shapes,
            fewer than 2 target classes, an unknown solver, non-positive ``reg``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
        >>> r = otce(x, [0, 0, 1, 1], x + 0.1, [7, 7, 3, 3])  # classes map one-to-one
        >>> float(r.task_distance), round(float(r.domain_distance), 6)
        (0.0, 0.01)
    """
    _check_solver_options(solver, reg, max_iter, tol)
    lam = _check_weights(weights)
    cap = check_max_samples(max_samples, minimum=2)
    check_correction(correction, n_perm)
    xs, xt = _prepare_features(source_features, target_features)
    ys, cs = check_labels(source_labels, xs.shape[0], "source_labels", min_classes=1)
    yt, ct = check_labels(target_labels, xt.shape[0], "target_labels", min_classes=2)
    if cap is not None:  # stratified: every class survives, so the codes keep their meaning
        keep_s = stratified_subset(ys, cap, seed)
        keep_t = stratified_subset(yt, cap, int(seed) + 1)
        xs, ys = xs[keep_s.to(xs.device)], ys[keep_s]
        xt, yt = xt[keep_t.to(xt.device)], yt[keep_t]
    ys, yt = ys.to(xs.device), yt.to(xs.device)

    cost = squared_euclidean(xs, xt)  # (Ns, Nt)
    plan = _coupling(cost, solver, reg, max_iter, tol)
    w_d = torch.dot(plan.reshape(-1), cost.reshape(-1))  # Σ π∘C without an (Ns, Nt) temporary
    joint = joint_labels(plan, ys, cs, yt, ct)  # (Cs, Ct)
    w_t = _plogp(joint.sum(dim=1)).sum() - _plogp(joint).sum()

    def combine(task: Tensor) -> Tensor:
        return -task if lam is None else lam[0] * w_d + lam[1] * task + lam[2]

    if correction == "none":
        return OTCEResult(score=combine(w_t), domain_distance=w_d, task_distance=w_t, coupling=plan)
    null = None
    if correction == "miller_madow":
        fix = miller_madow_correction(joint, min(xs.shape[0], xt.shape[0]))
    else:
        null_wt = task_distance_null(plan, ys, cs, yt, ct, label_permutations(xt.shape[0], n_perm, seed, yt.device))
        fix = -null_wt.mean()
        null = calibrate(combine(w_t).detach(), combine(null_wt))
    return OTCEResult(
        score=combine(w_t + fix),
        domain_distance=w_d,
        task_distance=w_t,
        coupling=plan,
        correction=correction,
        task_correction=fix,
        null=null,
    )


def otce_sim(
    source_features: Any,
    source_labels: Any,
    target_features: Any,
    target_labels: Any,
    *,
    solver: str = "emd",
    reg: float = 0.05,
    max_samples: int | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    tol: float = 1e-9,
    correction: str = "none",
    n_perm: int = 100,
) -> Tensor:
    r"""OTCE_sim = :math:`-W_T = -H(Y_t \mid Y_s)`, the score of :func:`otce` without weights.

    Returns a 0-d float64 tensor (≤ 0 without a correction; higher = more transferable).
    Arguments as in :func:`otce` (``correction="null"``: ``score − E_null[score]``).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
        >>> float(otce_sim(x, [0, 0, 0, 0], x, [1, 1, 2, 2]))  # one source class: -H(Y_t) = -log 2
        -0.6931471805599453
    """
    return otce(
        source_features,
        source_labels,
        target_features,
        target_labels,
        solver=solver,
        reg=reg,
        max_samples=max_samples,
        seed=seed,
        max_iter=max_iter,
        tol=tol,
        correction=correction,
        n_perm=n_perm,
    ).score


def fit_otce_weights(domain_distances: Any, task_distances: Any, accuracies: Any) -> tuple[float, float, float]:
    r"""Least-squares weights of OTCE on auxiliary tasks (Tan et al., CVPR 2021 [1], Sec. 3.3).

    .. math::
        (\lambda_1, \lambda_2, \lambda_3) = \arg\min_\lambda \sum_k
        \big(\lambda_1 W_D^{(k)} + \lambda_2 W_T^{(k)} + \lambda_3 - \mathrm{acc}^{(k)}\big)^2

    over K ≥ 3 auxiliary source→target tasks with known transfer accuracy (float64,
    ``numpy.linalg.lstsq``).

    Sample path: needs the samples themselves (the coupling between them).

    Args:
        domain_distances: ``(K,)`` W_D of the auxiliary tasks (``OTCEResult.domain_distance``).
        task_distances: ``(K,)`` W_T of the auxiliary tasks (``OTCEResult.task_distance``).
        accuracies: ``(K,)`` measured transfer accuracies of the auxiliary tasks.

    Returns:
        ``(λ1, λ2, λ3)`` as Python floats, to pass as ``otce(..., weights=...)``.

    Raises:
        ValueError: fewer than 3 tasks, different lengths, NaN/Inf, or W_D and W_T
            collinear/constant over the tasks (the weights are then not identifiable).

    Example:
        >>> tuple(round(v, 6) for v in fit_otce_weights([1, 2, 3, 4], [0.5, 0.1, 0.9, 0.3], [0.9, 1.0, 0.5, 0.7]))
        (-0.1, -0.5, 1.25)
    """
    cols = []
    for name, v in (
        ("domain_distances", domain_distances),
        ("task_distances", task_distances),
        ("accuracies", accuracies),
    ):
        arr = as_tensor(v, name).detach().cpu().to(torch.float64).numpy()
        if arr.ndim != 1:
            raise ValueError(f"`{name}` must be 1-D (one value per auxiliary task), got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN/Inf; drop those auxiliary tasks.")
        cols.append(arr)
    k = cols[0].shape[0]
    if any(c.shape[0] != k for c in cols):
        raise ValueError(
            "`domain_distances`, `task_distances` and `accuracies` must have one entry per auxiliary task; "
            f"got lengths {[c.shape[0] for c in cols]}."
        )
    if k < 3:
        raise ValueError(f"need at least 3 auxiliary tasks to fit 3 weights, got {k}; add auxiliary tasks.")
    design = np.stack([cols[0], cols[1], np.ones(k)], axis=1)  # (K, 3)
    lam, _, rank, _ = np.linalg.lstsq(design, cols[2], rcond=None)
    if rank < 3:
        raise ValueError(
            "`domain_distances` and `task_distances` are collinear or constant over the auxiliary tasks, so the "
            "weights are not identifiable; use more varied auxiliary tasks, or OTCE_sim (`weights=None`)."
        )
    return float(lam[0]), float(lam[1]), float(lam[2])
