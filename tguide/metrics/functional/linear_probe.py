"""Cross-validated linear-probe accuracy (closed-form ridge classifier): a baseline score.

References:
    [1] A. E. Hoerl, R. W. Kennard, "Ridge Regression: Biased Estimation for Nonorthogonal
        Problems", Technometrics 12(1), 1970.
    [2] R. Rifkin, G. Yeo, T. Poggio, "Regularized Least-Squares Classification", in
        Advances in Learning Theory, NATO Science Series III 190, 2003 (one-vs-all
        least-squares classifiers on one-hot targets).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["linear_probe_accuracy", "stratified_folds"]


def stratified_folds(codes: Tensor, folds: int, seed: int = 0) -> Tensor:
    """Fold id ``(N,)`` in ``0..folds-1`` of each sample, stratified by class and seeded.

    One seeded random permutation of the samples (CPU generator, so the split does not
    depend on the device) orders the members of each class; classes are taken in the
    order in which their first member appears in that permutation, concatenated, and
    dealt to the folds round-robin. Every class is spread evenly over the folds (sizes
    differ by at most one) and the total fold sizes by at most one. The split depends on
    the seed, the sample positions and the partition, not on the label names.
    """
    n = codes.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(codes.device)
    lab = codes[perm]
    c = int(codes.max()) + 1  # codes are 0..C-1 here (remapped by check_labels)
    first = torch.full((c,), n, dtype=torch.int64, device=codes.device).scatter_reduce_(
        0, lab, torch.arange(n, device=codes.device), reduce="amin"
    )  # position of each class's first member in the permutation
    key = first[lab] * n + torch.arange(n, device=codes.device)  # class block, then permuted order
    order = perm[torch.argsort(key)]
    fold = torch.empty(n, dtype=torch.int64, device=codes.device)
    fold[order] = torch.arange(n, device=codes.device) % folds
    return fold


def _ridge_predict(xtr: Tensor, ytr: Tensor, xte: Tensor, c: int, l2: float) -> Tensor:
    """Standardise on the training fold, fit ridge on one-hot targets, return test argmax."""
    mu = xtr.mean(dim=0, keepdim=True)
    sd = xtr.std(dim=0, unbiased=False, keepdim=True)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    t = torch.nn.functional.one_hot(ytr, c).to(a.dtype)
    tbar = t.mean(dim=0, keepdim=True)  # the unpenalised intercept
    n, d = a.shape
    if d <= n:
        g = a.T @ a + l2 * torch.eye(d, dtype=a.dtype, device=a.device)
        w = torch.linalg.solve(g, a.T @ (t - tbar))
    else:  # dual form: W = Aᵀ (AAᵀ + αI)⁻¹ T
        g = a @ a.T + l2 * torch.eye(n, dtype=a.dtype, device=a.device)
        w = a.T @ torch.linalg.solve(g, t - tbar)
    score = b @ w + tbar
    absent = t.sum(dim=0) == 0  # a class missing from the training fold is never predicted
    return score.masked_fill(absent[None, :], -torch.inf).argmax(dim=1)


def linear_probe_accuracy(features: Any, labels: Any, *, folds: int = 5, l2: float = 1.0, seed: int = 0) -> Tensor:
    r"""Mean held-out accuracy of a ridge-regression classifier over stratified folds.

    For each fold, on the other folds: standardise every feature (training mean and
    population std; constant features keep scale 1), fit the closed-form ridge regression
    of the one-hot targets with an unpenalised intercept,

    .. math::
        W = \arg\min_W \lVert (A - \bar A) W - (T - \bar T) \rVert_F^2 + \alpha \lVert W \rVert_F^2
          = (A_c^\top A_c + \alpha I)^{-1} A_c^\top T_c,

    and predict :math:`\arg\max_c (a W + \bar T)_c` on the held-out fold; the score is
    the mean of the per-fold accuracies. This is sklearn's ``RidgeClassifier(alpha=l2)``
    (targets ±1 instead of 0/1 give the same argmax) after a ``StandardScaler``: a cheap,
    deterministic stand-in for a multinomial logistic probe, solved in the primal
    (D×D) or dual (N×N) form, whichever is smaller.

    Choices: ``l2 = 1`` (sklearn's default, on standardised features; no tuning on the
    labels), 5 folds from :func:`stratified_folds` with ``seed``. Invariant to label
    renaming and to per-feature affine maps (translation, scaling) of the features, not
    to rotations (the standardisation is per feature); the split, hence the value,
    depends on the seed and on the sample order.

    Sample path: needs the samples themselves (a cross-validated probe on the rows).

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        folds: number of folds, ``2 ≤ folds ≤ N``.
        l2: ridge penalty α (> 0).
        seed: seed of the fold split.

    Returns:
        0-d float64 tensor in ``[0, 1]`` on the features' device; higher = more transferable.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(100) % 2
        >>> f = torch.randn(100, 3, generator=g, dtype=torch.float64) + 4.0 * y[:, None]
        >>> float(linear_probe_accuracy(f, y))
        1.0
    """
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    n = x.shape[0]
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or not 2 <= folds <= n:
        raise ValueError(f"`folds` must be an integer in [2, N={n}], got {folds!r}; pass fewer folds or more samples.")
    if not (isinstance(l2, numbers.Real) and l2 > 0):
        raise ValueError(f"`l2` must be a positive float (the ridge penalty), got {l2!r}.")
    fold = stratified_folds(codes, int(folds), seed)
    accs = []
    for f in range(int(folds)):
        test = fold == f
        pred = _ridge_predict(x[~test], codes[~test], x[test], c, float(l2))
        accs.append((pred == codes[test]).to(x.dtype).mean())
    return torch.stack(accs).mean()
