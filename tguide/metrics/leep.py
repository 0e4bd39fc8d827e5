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

__all__ = ["leep", "nce"]


def leep(source_probs: Any, labels: Any) -> Tensor:
    r"""Log Expected Empirical Prediction (Nguyen et al., ICML 2020 [1]).

    With θ the source model's class probabilities on the N target samples,

    .. math::
        \hat P(y, z) = \frac1N \sum_{i:\,y_i = y} \theta_{iz}, \quad
        \hat P(y \mid z) = \frac{\hat P(y, z)}{\hat P(z)}, \quad
        \mathrm{LEEP} = \frac1N \sum_i \log \sum_z \hat P(y_i \mid z)\, \theta_{iz}

    The joint is one ``index_add_`` of the rows of θ and the inner sums one ``(N, Cs) @
    (Cs, C)`` product. A source class with
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
    y, c = check_labels(labels, theta.shape[0], "labels", min_classes=2)
    y = y.to(theta.device)
    n = theta.shape[0]
    joint = torch.zeros(c, theta.shape[1], dtype=theta.dtype, device=theta.device)
    joint.index_add_(0, y, theta).div_(n)  # (C, Cs): P̂(y, z)
    marginal = joint.sum(dim=0, keepdim=True)  # (1, Cs): P̂(z)
    cond = torch.where(marginal > 0, joint / torch.where(marginal > 0, marginal, 1.0), 0.0)
    eep = (theta @ cond.T).gather(1, y[:, None])[:, 0]  # (N,): Σ_z P̂(y_i|z) θ_iz
    return torch.log(eep).mean()


def nce(source_labels: Any, labels: Any) -> Tensor:
    r"""Negative Conditional Entropy (Tran et al., ICCV 2019 [2]).

    From the empirical joint distribution of the source model's hard labels ``Z`` and
    the target labels ``Y`` on the same samples:

    .. math::
        \mathrm{NCE} = -H(Y \mid Z) = \sum_{z, y} \hat P(z, y)\,
        \log \frac{\hat P(z, y)}{\hat P(z)} \qquad (0 \log 0 = 0)

    NCE ≤ 0, with equality when Y is a function of Z. A source side with a single class
    is allowed (then NCE = −H(Y)).

    Args:
        source_labels: ``(N,)`` source-model hard labels (e.g. ``logits.argmax(1)``),
            any label set.
        labels: ``(N,)`` target class ids, any label set, at least 2 classes.

    Returns:
        0-d float64 tensor on the labels' device; higher = more transferable.

    Example:
        >>> import torch
        >>> float(nce(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 6, 6])))
        0.0
    """
    y, c = check_labels(labels, None, "labels", min_classes=2)
    z, cz = check_labels(source_labels, None, "source_labels", min_classes=1)
    check_same_length(z, y, "source_labels", "labels")
    z = z.to(y.device)
    n = y.shape[0]
    counts = torch.bincount(z * c + y, minlength=cz * c).reshape(cz, c).to(torch.float64)
    joint = counts / n  # (Cz, C)
    marginal = joint.sum(dim=1, keepdim=True)  # (Cz, 1); > 0 for every remapped z
    terms = torch.where(joint > 0, joint * torch.log(joint / marginal), 0.0)
    return terms.sum()
