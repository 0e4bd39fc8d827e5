"""LEEP and NCE: transferability from a source model's predictions on the target data.

References:
    [1] C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New Measure to
        Evaluate Transferability of Learned Representations", ICML 2020.
    [2] A. T. Tran, C. V. Nguyen, T. Hassner, "Transferability and Hardness of Supervised
        Classification Tasks", ICCV 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_labels, check_probs, check_same_length
from tguide.metrics.functional.permutation import check_correction, label_permutations
from tguide.metrics.statistics import LabelPairCounts, LEEPJointTable

__all__ = ["leep", "leep_from_joint", "nce", "nce_from_statistics"]


def leep(source_probs: Any, labels: Any) -> Tensor:
    r"""Log Expected Empirical Prediction (Nguyen et al., ICML 2020 [1]).

    With θ the source model's class probabilities on the N target samples,

    .. math::
        \hat P(y, z) = \frac1N \sum_{i:\,y_i = y} \theta_{iz}, \quad
        \hat P(y \mid z) = \frac{\hat P(y, z)}{\hat P(z)}, \quad
        \mathrm{LEEP} = \frac1N \sum_i \log \sum_z \hat P(y_i \mid z)\, \theta_{iz}

    The joint is a sufficient statistic (:class:`~tguide.metrics.statistics.LEEPJointTable`);
    the score needs the samples too (:func:`leep_from_joint`): the inner sums are one
    ``(N, Cs) @ (Cs, C)`` product. A source class with
    ``P̂(z) = 0`` has ``θ_iz = 0`` for every sample, so it contributes nothing; its
    ``P̂(y|z)`` is set to 0 instead of 0/0. Every inner sum is at least
    ``Σ_z θ_iz² / N > 0``, so the score is finite, and it is ≤ 0.

    Args:
        source_probs: ``(N, Cs)`` source-model probabilities (rows sum to 1; apply
            ``softmax`` to logits first).
        labels: ``(N,)`` target class ids, any label set, at least 2 classes.

    Returns:
        0-d float64 tensor on the probabilities' device; higher = more transferable.

    Example:
        >>> import torch
        >>> theta = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
        >>> float(leep(theta, torch.tensor([3, 3, 8, 8])))  # labels a function of z
        0.0
    """
    theta = check_probs(source_probs, "source_probs")  # (N, Cs) float64
    check_labels(labels, theta.shape[0], "labels", min_classes=2)
    return leep_from_joint(LEEPJointTable.from_samples(theta, labels), theta, labels)


def leep_from_joint(table: LEEPJointTable, source_probs: Any, labels: Any) -> Tensor:
    r"""LEEP from its joint table (:class:`~tguide.metrics.statistics.LEEPJointTable`) and the samples.

    The joint ``P̂(y, z)`` is a sufficient statistic (mergeable across batches and processes),
    but the score is a mean over the samples of ``log Σ_z P̂(y_i|z) θ_iz`` with the *final*
    table: it needs every sample's ``θ_i`` and ``y_i`` (the sample path).
    """
    theta = check_probs(source_probs, "source_probs")
    y, c = check_labels(labels, theta.shape[0], "labels", min_classes=2)
    joint = table.joint()  # (C, Cs): P̂(y, z), classes in sorted label order (= the codes of y)
    if joint.shape != (c, theta.shape[1]):
        raise ValueError(
            f"the joint table is {tuple(joint.shape)} but the samples have {c} classes and "
            f"{theta.shape[1]} source classes; pass the samples the table was built from."
        )
    marginal = joint.sum(dim=0, keepdim=True)  # (1, Cs): P̂(z)
    cond = torch.where(marginal > 0, joint / torch.where(marginal > 0, marginal, 1.0), 0.0)
    eep = (theta @ cond.T).gather(1, y.to(theta.device)[:, None])[:, 0]  # (N,): Σ_z P̂(y_i|z) θ_iz
    return torch.log(eep).mean()


def nce(source_labels: Any, labels: Any, *, correction: str = "none", n_perm: int = 100, seed: int = 0) -> Tensor:
    r"""Negative Conditional Entropy (Tran et al., ICCV 2019 [2]).

    From the empirical joint distribution of the source model's hard labels ``Z`` and
    the target labels ``Y`` on the same samples:

    .. math::
        \mathrm{NCE} = -H(Y \mid Z) = \sum_{z, y} \hat P(z, y)\,
        \log \frac{\hat P(z, y)}{\hat P(z)} \qquad (0 \log 0 = 0)

    NCE ≤ 0, with equality when Y is a function of Z. A source side with a single class
    is allowed (then NCE = −H(Y)).

    The plug-in ``H(Y|Z)`` is biased low when the table has many cells per sample (a source
    with hundreds of classes): ``correction`` removes that bias. ``"none"`` (default) is the
    paper's formula. ``"null"``: NCE minus its mean over ``n_perm`` label shuffles (seeded by
    ``seed``): ≈ 0 without information, > 0 with it; use it to compare sources with different
    numbers of classes. ``"miller_madow"``: ``−(H(Y|Z) + (m_zy − m_z)/(2N))`` with ``m`` the
    occupied cells (Miller 1955); it under-corrects when cells hold few samples.

    Args:
        source_labels: ``(N,)`` source-model hard labels (e.g. ``logits.argmax(1)``),
            any label set.
        labels: ``(N,)`` target class ids, any label set, at least 2 classes.
        correction: ``"none"``, ``"null"`` or ``"miller_madow"``.
        n_perm, seed: label permutations of the ``"null"`` correction.

    Returns:
        0-d float64 tensor on the labels' device; higher = more transferable.

    Example:
        >>> import torch
        >>> float(nce(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 6, 6])))
        0.0
    """
    check_correction(correction, n_perm)
    y, c = check_labels(labels, None, "labels", min_classes=2)
    z, cz = check_labels(source_labels, None, "source_labels", min_classes=1)
    check_same_length(z, y, "source_labels", "labels")
    z = z.to(y.device)
    table = LabelPairCounts.from_samples(z, y)
    value = nce_from_statistics(table)
    if correction == "miller_madow":
        cells = int(table.part("t")["n"].numel())
        return value - (cells - cz) / (2.0 * y.shape[0])
    if correction == "null":
        perms = label_permutations(y.shape[0], n_perm, seed, y.device)
        null = torch.stack([nce_from_statistics(table.relabel(z, y[p])) for p in perms])
        return value - null.mean()
    return value


def nce_from_statistics(table: LabelPairCounts) -> Tensor:
    r"""NCE (:func:`nce`, no correction) from :class:`~tguide.metrics.statistics.LabelPairCounts`.

    From sufficient statistics only: ``Σ_{z,y} P̂(z, y) log(P̂(z, y)/P̂(z))`` from the counts of
    the (source label, label) pairs.
    """
    c = table.num_classes()
    if c < 2:
        raise ValueError(
            f"`labels` has {c} distinct class(es) but this metric needs at least 2; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )
    rec = table.part("t")
    joint = rec["n"] / rec["n"].sum()
    _, z = torch.unique(rec["key"][:, 0], return_inverse=True)
    marginal = torch.zeros(int(z.max()) + 1, dtype=joint.dtype, device=joint.device).index_add_(0, z, joint)
    return (joint * torch.log(joint / marginal[z])).sum()
