"""H-score and its Ledoit-Wolf shrinkage variant.

References:
    [1] Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas,
        "An Information-Theoretic Approach to Transferability in Task Transfer Learning",
        ICIP 2019.
    [2] S. Ibrahim, N. Ponomareva, R. Mazumder, "Newer is not always better: Rethinking
        transferability metrics, their peculiarities, stability and performance", WACV 2023
        (arXiv:2110.06893).
    [3] O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional covariance
        matrices", Journal of Multivariate Analysis 88(2), 2004.

Both scores are traces ``tr(A^+ B)`` of a (shrunk) feature covariance ``A`` against the
between-class covariance ``B``. They are computed from ONE symmetric eigendecomposition:
of ``S = Zᵀ Z / N`` (D×D) when ``N ≥ D``, or of the Gram matrix ``Z Zᵀ / N`` (N×N) when
``N < D``; both have the same non-zero eigenvalues, and ``B`` lives in the row space of
``Z``, so the two routes give the same number.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["hscore", "hscore_shrinkage", "ledoit_wolf_shrinkage"]


def _prepare(features: Any, labels: Any) -> tuple[Tensor, Tensor, Tensor, int]:
    """Validate; return centred features ``z (N, D)``, label codes ``(N,)``, counts ``(C,)``, C."""
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    z = x - x.mean(dim=0, keepdim=True)
    counts = torch.bincount(codes, minlength=c).to(x.dtype)  # (C,)
    return z, codes, counts, c


def _gram(z: Tensor) -> Tensor:
    """The smaller Gram matrix of ``z (N, D)``: ``ZᵀZ (D, D)`` if N ≥ D, else ``ZZᵀ (N, N)``."""
    g = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    return 0.5 * (g + g.T)


def _spectrum(z: Tensor, gram: Tensor, codes: Tensor, counts: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues of ``S = ZᵀZ/N`` and the between-class energy along each eigenvector.

    Returns ``lam (K,)`` (clamped at 0, K = min(N, D)) and ``energy (K,)`` with
    ``energy_k = v_kᵀ B v_k``, ``B = Σ_c (n_c/N) d_c d_cᵀ``, ``d_c`` the centred mean of
    class ``c``. Eigenvectors of S outside the row space of Z carry no energy and are
    left out when ``N < D``.
    """
    n, d = z.shape
    if n >= d:
        lam, v = torch.linalg.eigh(gram / n)  # S = ZᵀZ/N; v: (D, D)
        sums = torch.zeros(c, d, dtype=z.dtype, device=z.device).index_add_(0, codes, z)
        # rows sqrt(n_c/N) d_c, so that B = MᵀM; d_c = sums_c / n_c
        m = sums / torch.sqrt(counts * n)[:, None]  # (C, D)
        energy = ((m @ v) ** 2).sum(dim=0)
    else:
        lam, u = torch.linalg.eigh(gram / n)  # ZZᵀ/N; u: (N, N)
        # v_k = Zᵀu_k / sqrt(N λ_k) gives v_kᵀ B v_k = λ_k Σ_c (Σ_{i∈c} u_ik)² / n_c
        usum = torch.zeros(c, n, dtype=z.dtype, device=z.device).index_add_(0, codes, u)
        energy = lam.clamp_min(0) * (usum**2 / counts[:, None]).sum(dim=0)
    return lam.clamp_min(0), energy


def _rank_cut(lam: Tensor, n: int, d: int) -> Tensor:
    """Eigenvalues at or below ``λ_max · max(N, D) · ε₆₄`` count as zero (numpy's rank rule)."""
    return lam.max() * max(n, d) * torch.finfo(lam.dtype).eps


def hscore(features: Any, labels: Any) -> Tensor:
    r"""H-score of features for a classification target (Bao et al., ICIP 2019 [1]).

    .. math::
        \mathcal{H}(f) = \operatorname{tr}\!\big(\operatorname{cov}(f)^{+}\,
        \operatorname{cov}(\mathbb{E}[f \mid y])\big),
        \qquad \operatorname{cov}(\mathbb{E}[f \mid y]) = \sum_c \tfrac{n_c}{N}
        (\mu_c - \mu)(\mu_c - \mu)^\top

    Both covariances use the 1/N normalisation (the ratio is what matters). The
    pseudo-inverse comes from the eigendecomposition of the symmetric covariance
    ``S = V Λ Vᵀ``: ``S⁺ = Σ_{λ_k > t} v_k v_kᵀ / λ_k`` with the relative cutoff
    ``t = λ_max · max(N, D) · ε₆₄`` (the tolerance of ``numpy.linalg.matrix_rank``), so
    directions without variance are dropped instead of blowing up. Computed as
    ``Σ_{λ_k > t} v_kᵀ B v_k / λ_k``, from ``eigh`` of the D×D covariance when N ≥ D and
    of the N×N Gram matrix otherwise. Class means come from one ``index_add_``.

    The score lies in ``[0, rank(S)]``; it reaches ``rank(S)`` exactly when each class
    is a single point (no within-class variance). Constant features give 0.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Raises:
        ValueError: non-2-D / empty / NaN features, mismatched lengths, one class.

    Example:
        >>> import torch
        >>> f = torch.tensor([[0., 0.], [0., 0.], [1., 0.], [1., 0.], [0., 1.], [0., 1.]])
        >>> round(float(hscore(f, torch.tensor([5, 5, 7, 7, 9, 9]))), 6)
        2.0
    """
    z, codes, counts, c = _prepare(features, labels)
    n, d = z.shape
    lam, energy = _spectrum(z, _gram(z), codes, counts, c)
    keep = lam > _rank_cut(lam, n, d)
    ratio = torch.where(keep, energy / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return ratio.sum()


def ledoit_wolf_shrinkage(z: Tensor, gram: Tensor | None = None) -> Tensor:
    r"""Ledoit-Wolf (J. Multivariate Anal. 2004) optimal shrinkage intensity of centred data ``z (N, D)``.

    ``gram`` may pass the smaller Gram matrix (``ZᵀZ`` if N ≥ D else ``ZZᵀ``) when the
    caller has it already.

    With :math:`S = Z^\top Z / N`, :math:`\mu = \operatorname{tr}(S)/D`,

    .. math::
        \delta = \tfrac{1}{D}\lVert S - \mu I\rVert_F^2, \qquad
        \bar\beta = \tfrac{1}{D N^2}\sum_i \lVert z_i z_i^\top - S\rVert_F^2
                  = \tfrac{1}{D N}\Big(\tfrac{1}{N}\sum_i \lVert z_i\rVert^4
                    - \lVert S\rVert_F^2\Big), \qquad
        \alpha = \min(\bar\beta, \delta) / \delta \in [0, 1]

    (α = 0 when δ = 0, i.e. S is already a multiple of I). Needs only row norms and
    ``‖S‖_F² = ‖ZZᵀ‖_F² / N²``, whichever Gram matrix is smaller.
    """
    n, d = z.shape
    sq = (z * z).sum(dim=1)  # (N,) squared row norms
    trace = sq.sum() / n
    if gram is None:
        gram = _gram(z)
    s_fro2 = (gram * gram).sum() / n**2
    mu = trace / d
    delta = (s_fro2 - 2 * mu * trace + d * mu**2) / d
    beta = ((sq * sq).sum() / n - s_fro2) / (d * n)
    if float(delta) <= 0.0:
        return torch.zeros((), dtype=z.dtype, device=z.device)
    return (torch.minimum(beta, delta) / delta).clamp(0.0, 1.0)


def hscore_shrinkage(features: Any, labels: Any) -> Tensor:
    r"""Shrinkage H-score (Ibrahim, Ponomareva, Mazumder, WACV 2023 [2]).

    The feature covariance is replaced by its Ledoit-Wolf estimate [3], which keeps the
    score stable when D is large next to N:

    .. math::
        \mathcal{H}_\alpha(f) = \operatorname{tr}\!\big(\Sigma_{LW}^{+}\,(1-\alpha)\,
        \operatorname{cov}(\mathbb{E}[f \mid y])\big), \qquad
        \Sigma_{LW} = (1-\alpha)\,S + \alpha\,\tfrac{\operatorname{tr} S}{D}\,I

    with ``S`` the 1/N covariance of the centred features, α the Ledoit-Wolf optimal
    shrinkage (see :func:`ledoit_wolf_shrinkage`, clipped to [0, 1]) and the between-class
    covariance also 1/N. ``Σ_LW`` shares the eigenvectors of ``S`` (eigenvalues
    ``(1-α)λ_k + α tr(S)/D``), so the same single eigendecomposition as :func:`hscore` is
    reused; eigenvalues of ``Σ_LW`` below the relative cutoff of :func:`hscore` are
    dropped (this matters only when α = 0 and S is singular). Rotation invariant, like
    the H-score. Constant features give 0.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> f = torch.randn(40, 3, generator=g, dtype=torch.float64) + y[:, None]
        >>> 0 < float(hscore_shrinkage(f, y)) < float(hscore(f, y))
        True
    """
    z, codes, counts, c = _prepare(features, labels)
    n, d = z.shape
    gram = _gram(z)
    alpha = ledoit_wolf_shrinkage(z, gram)
    lam, energy = _spectrum(z, gram, codes, counts, c)
    mu = lam.sum() / d  # tr(S)/D; the eigenvalues left out when N < D are 0
    shrunk = (1 - alpha) * lam + alpha * mu
    keep = shrunk > _rank_cut(shrunk, n, d)
    denom = torch.where(keep, shrunk, torch.ones_like(shrunk))
    return ((1 - alpha) * torch.where(keep, energy / denom, torch.zeros_like(shrunk))).sum()
