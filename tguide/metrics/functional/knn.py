"""Leave-one-out k-nearest-neighbour accuracy of the features: a baseline score.

References:
    [1] T. Cover, P. Hart, "Nearest neighbor pattern classification", IEEE Transactions on
        Information Theory 13(1), 1967.
    [2] Z. Wu, Y. Xiong, S. X. Yu, D. Lin, "Unsupervised Feature Learning via
        Non-Parametric Instance Discrimination", CVPR 2018 (kNN accuracy with cosine
        similarity as a representation probe).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["knn_accuracy"]

_METRICS = ("cosine", "euclidean")
_CHUNK_ELEMENTS = 1 << 22  # distances held at once: 4M float64 = 32 MiB


def knn_accuracy(
    features: Any,
    labels: Any,
    *,
    k: int = 20,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> Tensor:
    r"""Leave-one-out kNN accuracy: each sample is classified by its k nearest *other* samples.

    .. math::
        \mathrm{acc} = \frac1N \sum_i \mathbb 1\big[\hat y_i = y_i\big], \qquad
        \hat y_i = \arg\max_c \#\{j \in \mathcal N_k(i) : y_j = c\}, \quad i \notin \mathcal N_k(i)

    with :math:`\mathcal N_k(i)` the k nearest neighbours of :math:`x_i` among the other
    N−1 samples, by cosine distance :math:`1 - \cos(x_i, x_j)` (``metric="cosine"``; an
    all-zero row has cosine 0 with everything) or Euclidean distance. Majority vote; a tie
    between classes goes to the tied class with the nearest neighbour among the k
    (remaining exact distance ties: the order ``torch.topk`` returns).

    ``k`` is fixed a priori, not tuned on the labels: 20 (a common probe setting, e.g.
    [2] uses 200 on ImageNet-sized sets), capped at N−1. Distances are computed for
    ``chunk_size`` query rows at a time (default: 2²² / N rows), so memory is
    O(chunk_size · N), never N². Invariant to label renaming, sample order, orthogonal
    rotation and isotropic scaling of the features, and (Euclidean) to translation.

    Sample path: needs the samples themselves (leave-one-out neighbours of every row).

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        k: neighbours that vote.
        metric: ``"cosine"`` or ``"euclidean"``.
        chunk_size: query rows per distance block, or ``None`` for the default.

    Returns:
        0-d float64 tensor in ``[0, 1]`` on the features' device; higher = more transferable.

    Example:
        >>> import torch
        >>> f = torch.tensor([[0., 1.], [0., 1.1], [0., 0.9], [1., 0.], [1.1, 0.], [0.9, 0.]])
        >>> float(knn_accuracy(f, torch.tensor([4, 4, 4, 9, 9, 9]), k=2))
        1.0
    """
    if metric not in _METRICS:
        raise ValueError(f"`metric` must be one of {_METRICS}, got {metric!r}.")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    n = x.shape[0]
    kk = min(int(k), n - 1)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // n)
    elif isinstance(chunk_size, bool) or int(chunk_size) < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
    chunk_size = int(chunk_size)

    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    else:
        x = x - x.mean(dim=0, keepdim=True)  # fewer cancellations in ‖a‖² + ‖b‖² − 2ab
        sq = (x * x).sum(dim=1)
    correct = x.new_zeros(())
    arange_k = torch.arange(kk, device=x.device)
    for start in range(0, n, chunk_size):
        q = x[start : start + chunk_size]
        b = q.shape[0]
        if metric == "cosine":
            dist = 1.0 - q @ x.T
        else:
            dist = sq[start : start + b, None] + sq[None, :] - 2.0 * q @ x.T
        rows = torch.arange(b, device=x.device)
        dist[rows, rows + start] = torch.inf  # leave the query itself out
        nn_idx = torch.topk(dist, kk, dim=1, largest=False, sorted=True).indices  # (b, k) nearest first
        nn_lab = codes[nn_idx]
        votes = torch.zeros(b, c, dtype=torch.int64, device=x.device).scatter_add_(1, nn_lab, torch.ones_like(nn_lab))
        first = torch.full((b, c), kk, dtype=torch.int64, device=x.device).scatter_reduce_(
            1, nn_lab, arange_k.expand(b, kk), reduce="amin"
        )  # rank of each class's nearest neighbour (k when absent)
        tied = votes == votes.max(dim=1, keepdim=True).values
        pred = torch.where(tied, first, torch.full_like(first, kk + 1)).argmin(dim=1)
        correct = correct + (pred == codes[start : start + b]).sum()
    return correct / n
