"""H-score and its Ledoit-Wolf shrinkage variant.

References:
    [1] Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas,
        "An Information-Theoretic Approach to Transferability in Task Transfer Learning",
        ICIP 2019.
    [2] S. Ibrahim, N. Ponomareva, R. Mazumder, "Newer is not always better: Rethinking
        transferability metrics, their peculiarities, stability and performance", ECML PKDD
        2022 (arXiv:2110.06893).
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
from tguide.metrics.statistics import GramStatistics

__all__ = [
    "hscore",
    "hscore_shrinkage",
    "hscore_from_statistics",
    "hscore_shrinkage_from_statistics",
    "ledoit_wolf_shrinkage",
]


def _need_classes(stats: GramStatistics) -> None:
    c = stats.num_classes()
    if c < 2:
        raise ValueError(
            f"`labels` has {c} distinct class(es) but this metric needs at least 2; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )


def _smaller_gram(z: Tensor) -> Tensor:
    """The smaller Gram matrix of ``z (N, D)``: ``ZᵀZ (D, D)`` if N ≥ D, else ``ZZᵀ (N, N)``."""
    g = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    return 0.5 * (g + g.T)


def _eigen(stats: GramStatistics) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Label-independent part, cached on the statistics: ``(lam, vecs, gram, z)``.

    Kept rows with N < D: ``z`` the centred rows, ``gram = ZZᵀ`` and ``eigh(gram/N)`` (sample
    space). Otherwise: ``gram = ZᵀZ`` (the centred Gram of the statistics), ``eigh(gram/N)``
    and ``z = None``. ``lam`` is clamped at 0.
    """
    hit = stats.feature_cache.get("hscore_eigen")
    if hit is None:
        if stats.rows is not None and stats.n < stats.rows[0].shape[1]:  # N = D: the D×D route
            x = stats.rows[0]
            z = x - x.mean(dim=0, keepdim=True)
            gram = _smaller_gram(z)
        else:
            z = None
            m2 = stats.part("g")["m2"][0]
            gram = 0.5 * (m2 + m2.T)
        lam, vecs = torch.linalg.eigh(gram / stats.n)
        hit = (lam.clamp_min(0), vecs, gram, z)
        stats.feature_cache["hscore_eigen"] = hit
    return hit


def _spectrum(stats: GramStatistics) -> tuple[Tensor, Tensor, int, int]:
    """Eigenvalues of ``S = ZᵀZ/N`` and the between-class energy along each eigenvector.

    Returns ``lam (K,)`` (clamped at 0) and ``energy (K,)`` with ``energy_k = v_kᵀ B v_k``,
    ``B = Σ_c (n_c/N) d_c d_cᵀ``, ``d_c`` the centred mean of class ``c``; and N, D. From the
    D×D Gram: ``energy = Σ_c ((√(n_c/N) d_c)ᵀ v_k)²``. From kept rows (N×N Gram
    ``ZZᵀ/N = U Λ Uᵀ``, ``v_k = Zᵀu_k/√(Nλ_k)``): ``energy_k = λ_k Σ_c (Σ_{i∈c} u_ik)²/n_c``.
    """
    lam, vecs, _, z = _eigen(stats)
    n = stats.n
    if z is not None:
        codes, counts, c = stats.labels_codes()
        usum = torch.zeros(c, n, dtype=vecs.dtype, device=vecs.device).index_add_(0, codes, vecs)
        energy = lam * (usum**2 / counts[:, None]).sum(dim=0)
        return lam, energy, n, z.shape[1]
    glob, cls = stats.part("g"), stats.part("c")
    m = (cls["mean"] - glob["mean"]) * torch.sqrt(cls["n"] / n)[:, None]  # rows √(n_c/N) d_c: B = MᵀM
    energy = ((m @ vecs) ** 2).sum(dim=0)
    return lam, energy, n, vecs.shape[0]


def _rank_cut(lam: Tensor, n: int, d: int) -> Tensor:
    """Eigenvalues at or below ``λ_max · max(N, D) · ε₆₄`` count as zero (numpy's rank rule)."""
    return lam.max() * max(n, d) * torch.finfo(lam.dtype).eps


def hscore_from_statistics(stats: GramStatistics) -> Tensor:
    r"""The H-score (:func:`hscore`) from :class:`~tguide.metrics.statistics.GramStatistics`.

    ``Σ_{λ_k > t} v_kᵀ B v_k / λ_k`` over the eigenpairs of ``S = ZᵀZ/N`` (the centred Gram of
    the statistics, or the N×N Gram of the kept rows when N ≤ D), ``B = Σ_c (n_c/N) d_c d_cᵀ``
    from the class counts and means, ``t = λ_max · max(N, D) · ε₆₄``. Computed from sufficient
    statistics only (no samples): exact for merged batches and processes.
    """
    _need_classes(stats)
    lam, energy, n, d = _spectrum(stats)
    keep = lam > _rank_cut(lam, n, d)
    ratio = torch.where(keep, energy / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return ratio.sum()


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
    of the N×N Gram matrix otherwise. Computed from sufficient statistics
    (:func:`hscore_from_statistics` of :class:`~tguide.metrics.statistics.GramStatistics`: the
    count, mean and centred Gram of all rows, the counts and means of the classes).

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
    return hscore_from_statistics(_statistics(features, labels))


def _statistics(features: Any, labels: Any) -> GramStatistics:
    x = check_features(features, "features")
    check_labels(labels, x.shape[0], "labels", min_classes=2)
    return GramStatistics.from_samples(x, labels)


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
    if gram is None:
        gram = _smaller_gram(z)
    return _lw_alpha(sq.sum() / n, (gram * gram).sum() / n**2, (sq * sq).sum() / n, n, d)


def _lw_alpha(trace: Tensor, s_fro2: Tensor, q4: Tensor, n: int, d: int) -> Tensor:
    """The Ledoit–Wolf intensity from ``tr S``, ``‖S‖_F²`` and ``(1/N) Σ‖z_i‖⁴`` (formula above)."""
    mu = trace / d
    delta = (s_fro2 - 2 * mu * trace + d * mu**2) / d
    beta = (q4 - s_fro2) / (d * n)
    if float(delta) <= 0.0:
        return torch.zeros((), dtype=trace.dtype, device=trace.device)
    return (torch.minimum(beta, delta) / delta).clamp(0.0, 1.0)


def _lw_statistics(stats: GramStatistics) -> Tensor:
    """Ledoit–Wolf intensity of the statistics: ``Σ‖z‖² = tr(ZᵀZ)``, ``‖S‖_F² = ‖Gram‖_F²/N²``
    (either Gram) and ``Σ‖z‖⁴`` (``q4`` of the statistics, or the kept rows)."""
    _, _, gram, z = _eigen(stats)
    n = stats.n
    if z is not None:
        return ledoit_wolf_shrinkage(z, gram)
    d = gram.shape[0]
    return _lw_alpha(gram.diagonal().sum() / n, (gram * gram).sum() / n**2, stats.part("g")["q4"][0] / n, n, d)


def _check_between_ddof(between_ddof: int, n: int) -> None:
    if isinstance(between_ddof, bool) or between_ddof not in (0, 1):
        raise ValueError(
            f"`between_ddof` must be 1 (the published listing's N − 1, the default) or 0 (1/N, the same "
            f"normalisation as the feature covariance); got {between_ddof!r}."
        )
    if n - between_ddof <= 0:
        raise ValueError(f"`between_ddof={between_ddof}` needs more than {between_ddof} sample(s); got N={n}.")


def hscore_shrinkage_from_statistics(stats: GramStatistics, *, between_ddof: int = 1) -> Tensor:
    r"""The shrinkage H-score (:func:`hscore_shrinkage`) from
    :class:`~tguide.metrics.statistics.GramStatistics` (sufficient statistics, no samples).

    ``N/(N − between_ddof) · Σ_{μ_k > t} (1-α) v_kᵀ B v_k / μ_k`` with ``μ_k = (1-α)λ_k + α tr(S)/D``
    the eigenvalues of the Ledoit–Wolf covariance, α from ``tr S``, ``‖S‖_F²`` and ``Σ‖z_i‖⁴``, and
    ``B`` the 1/N between-class covariance (rescaled to 1/(N − 1) by the default ``between_ddof=1``,
    the convention of the published listing; see :func:`hscore_shrinkage`).
    """
    _need_classes(stats)
    lam, energy, n, d = _spectrum(stats)
    _check_between_ddof(between_ddof, n)
    alpha = _lw_statistics(stats)
    mu = lam.sum() / d  # tr(S)/D; the eigenvalues left out when N < D are 0
    shrunk = (1 - alpha) * lam + alpha * mu
    keep = shrunk > _rank_cut(shrunk, n, d)
    denom = torch.where(keep, shrunk, torch.ones_like(shrunk))
    score = ((1 - alpha) * torch.where(keep, energy / denom, torch.zeros_like(shrunk))).sum()
    return score * (n / (n - between_ddof))


def hscore_shrinkage(features: Any, labels: Any, *, between_ddof: int = 1) -> Tensor:
    r"""Shrinkage H-score (Ibrahim, Ponomareva, Mazumder, ECML PKDD 2022 [2]).

    The feature covariance is replaced by its Ledoit-Wolf estimate [3], which keeps the
    score stable when D is large next to N:

    .. math::
        \mathcal{H}_\alpha(f) = \operatorname{tr}\!\big(\Sigma_{LW}^{+}\,(1-\alpha)\,
        \operatorname{cov}(\mathbb{E}[f \mid y])\big), \qquad
        \Sigma_{LW} = (1-\alpha)\,S + \alpha\,\tfrac{\operatorname{tr} S}{D}\,I

    with ``S`` the 1/N covariance of the centred features and α the Ledoit-Wolf optimal
    shrinkage (see :func:`ledoit_wolf_shrinkage`, clipped to [0, 1]), both as scikit-learn's
    ``LedoitWolf`` estimates them, and the between-class covariance
    ``cov(E[f|y]) = Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ / (N − between_ddof)``, ``g_i`` the mean of sample
    i's class.

    **Convention.** The paper's text leaves the normalisation of ``cov(E[f|y])`` open; its
    published listing computes it with ``numpy.cov`` (N − 1) while ``Σ_LW`` is the 1/N
    Ledoit–Wolf estimate. ``between_ddof=1`` (the default) follows the listing;
    ``between_ddof=0`` gives the 1/N variant (the listing's score times ``(N − 1)/N``; the
    ranking of candidates on one target is the same either way). ``Σ_LW`` shares the eigenvectors of ``S`` (eigenvalues
    ``(1-α)λ_k + α tr(S)/D``), so the same single eigendecomposition as :func:`hscore` is
    reused (computed from sufficient statistics, :func:`hscore_shrinkage_from_statistics`);
    eigenvalues of ``Σ_LW`` below the relative cutoff of :func:`hscore` are
    dropped (this matters only when α = 0 and S is singular). Rotation invariant, like
    the H-score. Constant features give 0.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        between_ddof: 1 (default): the between-class covariance over N − 1, as the paper's
            listing; 0: over N.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Raises:
        ValueError: bad features or labels (as :func:`hscore`), ``between_ddof`` not 0 or 1.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> f = torch.randn(40, 3, generator=g, dtype=torch.float64) + y[:, None]
        >>> 0 < float(hscore_shrinkage(f, y)) < float(hscore(f, y))
        True
    """
    return hscore_shrinkage_from_statistics(_statistics(features, labels), between_ddof=between_ddof)
