"""NCTI: how far a model's features are from neural collapse on the target data.

References:
    [1] Z. Wang, Y. Luo, L. Zheng, Z. Huang, M. Baktashmotlagh, "How Far Pre-trained Models
        Are from Neural Collapse on the Target Dataset Informs their Transferability",
        ICCV 2023. The authors' code: github.com/BUserName/NCTI, ``metrics.py``
        (``NCTI_Score``) and ``evaluate_metric_group1_cpu.py`` (the normalisation over the
        model pool).
    [2] sklearn ``LinearDiscriminantAnalysis`` (solvers ``eigen`` and ``svd``), which the
        authors call and whose arithmetic is reproduced here.

:func:`pca_scores` (exact PCA) is shared with :mod:`~tguide.metrics.functional.gbc` and
:mod:`~tguide.metrics.functional.nleep`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["NCTITerms", "ncti", "ncti_pool", "ncti_terms", "pca_scores"]

_FLOOR = 1e-10


@dataclass(frozen=True)
class NCTITerms:
    """The three raw NCTI terms of one model (0-d float64 tensors).

    The proxies of the paper's three neural-collapse phenomena: ``separability``, the
    nuclear norm of the centred LDA projection (the "simplex encoded label interpolation"
    geometry, ``seli`` in the authors' code; higher = better); ``class_variance``,
    ``log Σ_c ‖P_c‖_*`` of the LDA posteriors per class (within-class variability collapse;
    lower = better); ``nearest_centre``, the mean LDA posterior of the true class (the
    nearest-centre classifier; higher = better).
    """

    separability: Tensor
    class_variance: Tensor
    nearest_centre: Tensor


def pca_scores(x: Tensor, k: int | None = None, *, variance: float | None = None) -> tuple[Tensor, Tensor]:
    """Exact PCA of ``x (N, D)``: scores ``(N, K)`` and explained variances ``(K,)`` (1/(N-1)).

    At most ``min(D, N-1)`` components (a centred cloud of N points spans N-1
    dimensions; sklearn would return an N-th one of zero variance). ``k`` caps the count;
    ``variance`` in ``(0, 1]`` keeps the fewest components whose cumulative explained
    variance ratio exceeds it (sklearn's ``PCA(n_components=variance)`` rule, strict
    ``>``), all when 1. From ``eigh`` of ``XᵀX`` (D ≤ N) or of ``XXᵀ``; component signs
    are arbitrary, which none of the scores here depends on.
    """
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    if d <= n:
        g = xc.T @ xc
        lam, v = torch.linalg.eigh(0.5 * (g + g.T))
        lam, v = lam.flip(0).clamp_min(0.0), v.flip(1)
        scores = xc @ v
    else:
        g = xc @ xc.T
        lam, u = torch.linalg.eigh(0.5 * (g + g.T))
        lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
        scores = u * lam.sqrt()
    r = min(d, n - 1)
    lam, scores = lam[:r] / max(n - 1, 1), scores[:, :r]
    if variance is not None:
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"`pca_variance` must be in (0, 1], got {variance!r}.")
        total = lam.sum()
        if variance < 1.0 and float(total) > 0.0:
            ratio = torch.cumsum(lam / total, 0)
            target = torch.tensor([variance], dtype=ratio.dtype, device=ratio.device)
            r = min(int(torch.searchsorted(ratio, target, right=True)) + 1, r)
    if k is not None:
        r = min(r, k)
    return scores[:, :r], lam[:r]


def _shrink(s: Tensor, lam: float) -> Tensor:
    k = s.shape[0]
    return (1.0 - lam) * s + lam * (torch.trace(s) / k) * torch.eye(k, dtype=s.dtype, device=s.device)


def _lda(x: Tensor, codes: Tensor, c: int, shrinkage: float | None) -> tuple[Tensor, Tensor]:
    """sklearn's LDA on ``x (N, K)``: ``(projection (N, r), log_proba (N, C))``.

    ``shrinkage`` a float: solver ``eigen`` (``S_w = Σ π_c Σ_c`` with 1/n_c, ``S_t`` with
    1/N, both shrunk; the top ``min(C-1, K)`` generalised eigenvectors of
    ``(S_t - S_w, S_w)`` normalised to ``VᵀS_wV = I``; posterior with ``S_w⁻¹``).
    ``None``: solver ``svd`` (no shrinkage; ``S_w`` whitened after a per-feature scaling
    by the within-class std, directions with singular value ≤ 1e-4 dropped; projected
    onto the span of the whitened class means; posterior with the whitened ``S_w``).
    ``S_w`` uses 1/N in both solvers, as sklearn ≥ 1.9 (PR #33626); older sklearn, which
    the authors ran (Python 3.7), used 1/(N-C) in the svd solver, an O(C/N) difference.
    """
    n, k = x.shape
    counts = torch.bincount(codes, minlength=c).to(x.dtype)
    log_prior = torch.log(counts / n)
    xc = x - x.mean(dim=0, keepdim=True)
    means = torch.zeros(c, k, dtype=x.dtype, device=x.device).index_add_(0, codes, xc) / counts[:, None]
    z = xc - means[codes]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    if shrinkage is not None:
        sw = _shrink(z.T @ z / n, shrinkage)
        sb = _shrink(xc.T @ xc / n, shrinkage) - sw
        chol = torch.linalg.cholesky(0.5 * (sw + sw.T))
        li = torch.linalg.solve_triangular(chol, eye, upper=False)  # L⁻¹
        m = li @ sb @ li.T
        evals, evecs = torch.linalg.eigh(0.5 * (m + m.T))
        r = min(c - 1, k)
        top = evecs[:, torch.argsort(evals, descending=True)[:r]]
        proj = xc @ (li.T @ top)
        w = torch.cholesky_solve(means.T, chol)  # S_w⁻¹ μᵀ
        logits = xc @ w - 0.5 * (means * w.T).sum(dim=1) + log_prior
        return proj, torch.log_softmax(logits, dim=1)
    # sklearn's svd solver: within-class std scaling, SVD of Z/(std·√N), rank at s > 1e-4
    std = z.std(dim=0, unbiased=False)
    std = torch.where(std == 0, torch.ones_like(std), std)
    _, sv, vt = torch.linalg.svd(z / std / math.sqrt(n), full_matrices=False)
    keep = sv > 1e-4
    white = (vt[keep] / std).T / sv[keep]  # (K, r'): whitening of S_w
    u, mw = xc @ white, means @ white
    logits = u @ mw.T - 0.5 * (mw * mw).sum(dim=1) + log_prior
    # sklearn: SVD of the weighted whitened centres sqrt(n_c/(C-1)) m_c, rank at tol=1e-4 · s_max
    _, s, vt = torch.linalg.svd(torch.sqrt(counts / max(c - 1, 1))[:, None] * mw, full_matrices=False)
    rank = int((s > 1e-4 * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0
    proj = u @ vt[:rank].T
    return proj, torch.log_softmax(logits, dim=1)


def ncti_terms(features: Any, labels: Any, *, pca_dim: int = 64, variance_components: int = 32) -> NCTITerms:
    r"""The three raw NCTI terms (Wang et al., ICCV 2023 [1]) of one model on the target data.

    Following the authors' ``NCTI_Score`` step by step:

    1. PCA to ``K = min(pca_dim, D, N-1)`` components (64 in the paper), scores ``X``.
    2. Shrinkage :math:`s = \max(e^{-\sum_{j \le 32} \sigma_j^2}, 10^{-10})` from the
       32 largest explained variances (1/(N-1)). When ``s`` is at the floor the authors
       switch to sklearn's ``svd`` LDA (no shrinkage, pooled covariance with 1/(N−C)),
       otherwise they use the ``eigen`` LDA with shrinkage ``s`` (both in :func:`_lda`).
    3. With :math:`Z` the LDA projection (:math:`\min(C-1, K)` columns) centred and
       :math:`P` the LDA posteriors (:math:`P_c` the rows of class c),

    .. math::
        S_{sep} = \lVert Z \rVert_*, \qquad
        S_{vc} = \log \sum_c \lVert P_c \rVert_*, \qquad
        S_{ncc} = \frac1N \sum_i P_{i y_i}.

    Choices where the paper is loose: PCA is exact (sklearn's ``auto`` solver is
    randomised for large inputs) and keeps at most N−1 components; the LDA's rank cut
    for singular pooled covariances is ``λ ≤ λ_max·K·ε₆₄`` (sklearn: singular value ≤ 1e-4
    of the standardised data). Invariant to label renaming, sample order, translation
    and orthogonal rotation of the features (PCA absorbs rotations); not to scale while
    ``s`` is above the floor.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes, N > C.
        pca_dim: PCA components kept (64 in the paper).
        variance_components: leading variances summed for the shrinkage (32 in the code).

    Returns:
        :class:`NCTITerms` of 0-d float64 tensors on the features' device.

    Raises:
        ValueError: bad features or labels, or every class a single sample (N = C).
    """
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    n = x.shape[0]
    if n <= c:
        raise ValueError(
            f"`labels`: {c} classes in {n} samples leave no within-class variation; NCTI's "
            "pooled covariance needs more samples than classes (at least one class with two)."
        )
    if isinstance(pca_dim, bool) or int(pca_dim) < 1:
        raise ValueError(f"`pca_dim` must be a positive integer, got {pca_dim!r}.")
    scores, var = pca_scores(x, int(pca_dim))
    s = math.exp(-float(var[:variance_components].sum()))
    proj, log_p = _lda(scores, codes, c, None if s <= _FLOOR else max(s, _FLOOR))
    proj = proj - proj.mean(dim=0, keepdim=True)
    separability = torch.linalg.svdvals(proj).sum() if proj.shape[1] else proj.new_zeros(())
    p = log_p.exp()
    nuc = p.new_zeros(())
    for k in range(c):
        nuc = nuc + torch.linalg.svdvals(p[codes == k]).sum()
    return NCTITerms(
        separability=separability,
        class_variance=torch.log(nuc),
        nearest_centre=p.gather(1, codes[:, None]).mean(),
    )


def ncti(features: Any, labels: Any, **kwargs: Any) -> Tensor:
    r"""NCTI of one model without the pool normalisation: :math:`S_{sep} - S_{vc} + S_{ncc}`.

    The paper ranks a *pool* of models by the sum of the three terms each min-max
    normalised across the pool (:func:`ncti_pool`, the ranking layer's job). This raw sum
    has the same signs (higher = more transferable) but its terms live on different
    scales (``S_sep`` grows with N), so compare models with :func:`ncti_pool`. Keyword
    arguments go to :func:`ncti_terms`.

    Sample path: needs the samples themselves (per-sample terms of the rows); not computed
    from sufficient statistics.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(120) % 3
        >>> noise = torch.randn(120, 8, generator=g, dtype=torch.float64)
        >>> bool(ncti(noise + 4.0 * y[:, None], y) > ncti(noise + 0.3 * y[:, None], y))
        True
    """
    t = ncti_terms(features, labels, **kwargs)
    return t.separability - t.class_variance + t.nearest_centre


def _minmax(v: Tensor) -> Tensor:
    """``(v - min) / (max - min)``; all zeros when the pool agrees (the authors divide by 0)."""
    span = v.max() - v.min()
    if float(span) == 0.0:
        return torch.zeros_like(v)
    return (v - v.min()) / span


def ncti_pool(terms: Sequence[NCTITerms]) -> Tensor:
    r"""NCTI scores ``(M,)`` of a pool of M models on one target (Wang et al. [1]).

    Each term is min-max normalised across the pool and combined as in the authors'
    ``evaluate_metric_group1_cpu.py``:

    .. math::
        \mathrm{NCTI}_m = \hat S_{sep,m} + \hat S_{ncc,m} - \hat S_{vc,m}, \qquad
        \hat S_m = \frac{S_m - \min_{m'} S_{m'}}{\max_{m'} S_{m'} - \min_{m'} S_{m'}}

    A term on which every model agrees contributes 0 (the authors' code would divide by
    zero). The scores are relative to the pool: adding or removing a model changes
    them. Higher = more transferable.
    """
    if len(terms) == 0:
        raise ValueError("`terms` is empty; pass the NCTITerms of at least one model.")
    device = terms[0].separability.device

    def col(name: str) -> Tensor:
        return torch.stack([getattr(t, name).to(device, torch.float64) for t in terms])

    return _minmax(col("separability")) + _minmax(col("nearest_centre")) - _minmax(col("class_variance"))
