"""GBC: Gaussian Bhattacharyya Coefficient between the target classes in feature space.

References:
    [1] M. Pándy, A. Agostinelli, J. Uijlings, V. Ferrari, T. Mensink, "Transferability
        Estimation using Bhattacharyya Class Separability", CVPR 2022. The authors' code:
        github.com/google-research/google-research, ``stable_transfer/transferability/gbc.py``
        and the experiment configs (``gaussian_type='spherical'``, ``pca_reduction=64``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels, check_min_per_class
from tguide.metrics.functional.ncti import pca_scores
from tguide.metrics.statistics import ClassVarianceStatistics

__all__ = ["gbc", "gbc_from_statistics"]

_GAUSSIANS = ("spherical", "diagonal")


def gbc(
    features: Any,
    labels: Any,
    *,
    gaussian: str = "spherical",
    pca_dim: int | None = None,
    min_variance: float = 1e-4,
    reference_code: bool = False,
) -> Tensor:
    r"""Gaussian Bhattacharyya Coefficient (Pándy et al., CVPR 2022 [1]).

    Each class c is a Gaussian :math:`\mathcal N(\mu_c, \Sigma_c)` with a diagonal
    covariance (per-dimension variances, 1/n_c) or a spherical one
    (:math:`\sigma_c^2 I`, :math:`\sigma_c^2` the mean of those variances); every variance
    is floored at ``min_variance`` (1e-4 in the authors' code) before averaging. With
    :math:`\Sigma = (\Sigma_i + \Sigma_j)/2`,

    .. math::
        D_B(i, j) = \tfrac18 (\mu_i - \mu_j)^\top \Sigma^{-1} (\mu_i - \mu_j)
        + \tfrac12 \ln \frac{\det \Sigma}{\sqrt{\det \Sigma_i \det \Sigma_j}}, \qquad
        \mathrm{GBC} = -\sum_{i} \sum_{j \ne i} e^{-D_B(i, j)}

    (ordered pairs, as the paper and the code: each unordered pair counts twice). The
    score lies in :math:`[-C(C-1), 0]`; 0 = perfectly separated classes.

    Choices: ``gaussian="spherical"`` is the authors' default in every experiment config;
    ``pca_dim=None`` uses the features as they are (the authors reduce to 64 dimensions
    with an exact PCA first; pass ``pca_dim=64``; at most ``min(D, N-1)`` components).
    For the spherical case the determinant term of a D-dimensional :math:`\sigma^2 I`
    is :math:`\tfrac D2 \ln(\bar\sigma^2 / \sigma_i\sigma_j)`; the authors' code sums the
    log of the scalar variances, dropping the factor D, which ``reference_code=True``
    reproduces. Invariant to label renaming, sample order and translation; to isotropic
    scaling while no variance hits the floor; the spherical variant (and any variant
    after PCA) also to orthogonal rotation of the features.

    Without PCA the score is computed from sufficient statistics (:func:`gbc_from_statistics`:
    per-class counts, means and per-dimension variances); the PCA needs the samples.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes of at least
            2 samples each.
        gaussian: ``"spherical"`` or ``"diagonal"``.
        pca_dim: PCA components to keep first, or ``None`` for none.
        min_variance: floor on each per-dimension class variance.
        reference_code: spherical determinant term as in the authors' code.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> noise = torch.randn(60, 4, generator=g, dtype=torch.float64)
        >>> bool(gbc(noise + 5.0 * y[:, None], y) > gbc(noise + 0.5 * y[:, None], y))
        True
    """
    _check_options(gaussian, min_variance)
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    check_min_per_class(torch.bincount(codes, minlength=c), 2, "labels", why="GBC fits a Gaussian to each class")
    if pca_dim is not None:
        if isinstance(pca_dim, bool) or int(pca_dim) < 1:
            raise ValueError(f"`pca_dim` must be None or a positive integer, got {pca_dim!r}.")
        x, _ = pca_scores(x, int(pca_dim))
    return gbc_from_statistics(
        ClassVarianceStatistics.from_samples(x, codes),
        gaussian=gaussian,
        min_variance=min_variance,
        reference_code=reference_code,
    )


def _check_options(gaussian: str, min_variance: float) -> None:
    if gaussian not in _GAUSSIANS:
        raise ValueError(f"`gaussian` must be one of {_GAUSSIANS}, got {gaussian!r}.")
    if not min_variance > 0:
        raise ValueError(f"`min_variance` must be positive, got {min_variance!r}.")


def gbc_from_statistics(
    stats: ClassVarianceStatistics,
    *,
    gaussian: str = "spherical",
    min_variance: float = 1e-4,
    reference_code: bool = False,
) -> Tensor:
    r"""GBC (:func:`gbc`, no PCA) from :class:`~tguide.metrics.statistics.ClassVarianceStatistics`.

    From sufficient statistics only: the class means ``μ_c`` and per-dimension variances
    ``σ²_cd = Σ_{i∈c} (x_id − μ_cd)² / n_c`` (floored at ``min_variance``) give every
    Bhattacharyya distance ``D_B(i, j)``; ``GBC = −Σ_i Σ_{j≠i} exp(−D_B(i, j))``.
    """
    _check_options(gaussian, min_variance)
    cls = stats.part("c")
    check_min_per_class(cls["n"].to(torch.long), 2, "labels", why="GBC fits a Gaussian to each class")
    c, d = cls["mean"].shape
    if c < 2:
        raise ValueError(
            f"`labels` has {c} distinct class(es) but this metric needs at least 2; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )
    means = cls["mean"] - (cls["n"][:, None] * cls["mean"]).sum(dim=0) / cls["n"].sum()  # centred: (C, D)
    var = (cls["m2d"] / cls["n"][:, None]).clamp_min(min_variance)  # (C, D)

    spherical = gaussian == "spherical"
    s = var.mean(dim=1)  # (C,) spherical variances
    logv = torch.log(var).sum(dim=1)  # (C,) log det of the diagonal covariances
    rows = []
    step = max(1, (1 << 22) // max(c * d, 1))  # rows of the (C, C, D) difference table per block
    for i in range(0, c, step):
        blk = slice(i, i + step)
        diff = means[blk, None, :] - means[None, :, :]  # (b, C, D)
        if spherical:
            avg = 0.5 * (s[blk, None] + s[None, :])  # (b, C)
            mahal = (diff * diff).sum(dim=2) / avg / 8.0
            logdet = torch.log(avg) - 0.5 * torch.log(s[blk])[:, None] - 0.5 * torch.log(s)[None, :]
            rows.append(mahal + 0.5 * (1.0 if reference_code else d) * logdet)
        else:
            avg = 0.5 * (var[blk, None, :] + var[None, :, :])  # (b, C, D)
            mahal = (diff * diff / avg).sum(dim=2) / 8.0
            logdet = torch.log(avg).sum(dim=2) - 0.5 * logv[blk, None] - 0.5 * logv[None, :]
            rows.append(mahal + 0.5 * logdet)
    db = torch.cat(rows, dim=0)
    bc = torch.exp(-db)
    off = ~torch.eye(c, dtype=torch.bool, device=db.device)
    return -bc[off].sum()
