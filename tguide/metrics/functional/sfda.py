"""SFDA: Self-challenging Fisher Discriminant Analysis, and the regularised LDA posterior it uses.

References:
    [1] W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo, "Not All Models
        Are Equal: Predicting Model Transferability in a Self-challenging Fisher Space",
        ECCV 2022. The authors' code: github.com/TencentARC/SFDA, ``metrics.py``
        (``SFDA_Score`` and the class ``SFDA``), ``utils.py`` (``iterative_A``).

The regularised LDA posterior (:func:`regularised_lda_log_proba`) is also the classification
term of ETran (:mod:`tguide.metrics.functional.etran`), whose authors copied the same class.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["sfda", "regularised_lda_log_proba", "adaptive_shrinkage"]

_A = 5.0  # λ = exp(-a · σ_max(S_w)); a = 5 in the paper and the authors' code
_FLOOR = 1e-10  # λ is floored here in the authors' code


class _Within:
    """Eigen-structure of the within-class covariance ``S_w = ZᵀZ / N`` of within-centred rows ``z``.

    From ``eigh`` of ``ZᵀZ/N`` (D×D) when N ≥ D, else of ``ZZᵀ/N`` (N×N); ``basis (D, K)``
    holds orthonormal eigenvectors (all D of them, ``full``, or the K = rank(Z) with
    non-zero eigenvalue when N < D), ``evals (K,)`` their eigenvalues.
    """

    def __init__(self, z: Tensor) -> None:
        n, d = z.shape
        self.z, self.n, self.d = z, n, d
        if n >= d:
            g = z.T @ z / n
            lam, v = torch.linalg.eigh(0.5 * (g + g.T))
            self.evals, self.basis, self.full = lam.clamp_min(0.0), v, True
        else:
            g = z @ z.T / n
            lam, u = torch.linalg.eigh(0.5 * (g + g.T))
            lam = lam.clamp_min(0.0)
            keep = lam > lam.max() * max(n, d) * torch.finfo(lam.dtype).eps
            lam, u = lam[keep], u[:, keep]
            self.evals, self.basis, self.full = lam, z.T @ u / torch.sqrt(n * lam), False
        self.trace = self.evals.sum()

    def largest(self, power_iterations: int | None) -> Tensor:
        """σ_max(S_w): exact, or the authors' ``iterative_A`` (power iteration from ``S_w 1``)."""
        if power_iterations is None:
            return self.evals.max()

        def mv(v: Tensor) -> Tensor:
            return self.z.T @ (self.z @ v) / self.n

        x = mv(torch.ones(self.d, dtype=self.z.dtype, device=self.z.device))  # A.sum(axis=1)
        if float(x.norm()) == 0.0:  # the authors' iteration would divide 0/0 here
            return self.evals.max()
        y = x
        for _ in range(power_iterations):
            t = mv(x)
            y = t / t.norm()
            t = mv(y)
            x = t / t.norm()
        return x @ mv(y)

    def solve(self, rhs: Tensor, shrinkage: float) -> Tensor:
        """``S_λ⁻¹ rhs`` for ``rhs (D, C)``, ``S_λ = (1-λ) S_w + λ (tr S_w / D) I``."""
        kappa = shrinkage * self.trace / self.d
        proj = self.basis.T @ rhs  # (K, C)
        out = self.basis @ (proj / ((1.0 - shrinkage) * self.evals + kappa)[:, None])
        if not self.full:  # the complement of Z's row space has eigenvalue κ
            out = out + (rhs - self.basis @ proj) / kappa
        return out


def adaptive_shrinkage(sigma_max: float, a: float = _A) -> float:
    """The SFDA shrinkage ``λ = max(exp(-a σ_max(S_w)), 1e-10)`` of Shao et al. [1]."""
    return max(math.exp(-a * sigma_max), _FLOOR)


def regularised_lda_log_proba(
    x: Tensor,
    codes: Tensor,
    c: int,
    *,
    shrinkage: float | None = None,
    power_iterations: int | None = None,
) -> tuple[Tensor, float]:
    r"""Class log-posteriors of the regularised LDA of Shao et al. [1] on ``x (N, D)``.

    With priors :math:`\pi_c = n_c/N`, class means :math:`\mu_c`, the within-class
    covariance :math:`S_w = \sum_c \pi_c \Sigma_c` (each :math:`\Sigma_c` with 1/n_c) and

    .. math::
        S_\lambda = (1-\lambda) S_w + \lambda \tfrac{\operatorname{tr} S_w}{D} I, \qquad
        \log p(c \mid x) = \operatorname{log\,softmax}_c\big(x^\top S_\lambda^{-1}\mu_c
        - \tfrac12 \mu_c^\top S_\lambda^{-1}\mu_c + \log \pi_c\big)

    (a Gaussian posterior with the shared covariance :math:`S_\lambda`). ``shrinkage=None``
    picks :math:`\lambda = \max(e^{-5\sigma_{\max}(S_w)}, 10^{-10})`, with σ_max exact or,
    for ``power_iterations=3``, the authors' three power-iteration steps.

    The authors' class also builds a between-class scatter and its generalised
    eigenvectors ``V``, but their posterior uses ``coef = μ V Vᵀ`` with *all* D
    eigenvectors, and ``V Vᵀ = S_λ⁻¹``: the projection does not change the posterior, so
    it is not computed here. Features are centred first (the posterior is translation
    invariant; this only avoids cancellation). ``S_λ⁻¹`` comes from one ``eigh`` of the
    smaller Gram matrix of the within-centred rows (D×D if N ≥ D, else N×N).

    Returns ``(log_proba (N, C), λ)``. Raises ``ValueError`` when ``S_w = 0``.
    """
    n, d = x.shape
    counts = torch.bincount(codes, minlength=c).to(x.dtype)
    xc = x - x.mean(dim=0, keepdim=True)
    means = torch.zeros(c, d, dtype=x.dtype, device=x.device).index_add_(0, codes, xc) / counts[:, None]
    within = _Within(xc - means[codes])
    if float(within.trace) <= 0.0:
        raise ValueError(
            "`features` have no within-class variance (every class is a single point), so the "
            "LDA covariance is singular; add samples that differ within a class."
        )
    if shrinkage is None:
        shrinkage = adaptive_shrinkage(float(within.largest(power_iterations)))
    w = within.solve(means.T, shrinkage)  # (D, C) = S_λ⁻¹ μᵀ
    logits = xc @ w - 0.5 * (means * w.T).sum(dim=1) + torch.log(counts / n)
    return torch.log_softmax(logits, dim=1), shrinkage


def sfda(features: Any, labels: Any, *, power_iterations: int | None = None, seed: int = 0) -> Tensor:
    r"""SFDA score (Shao et al., ECCV 2022 [1]): mean true-class posterior after self-challenge.

    The algorithm of the paper and of the authors' ``SFDA_Score`` (reproduced step by step):

    1. Fit the regularised LDA (:func:`regularised_lda_log_proba`) with
       :math:`\lambda = \max(e^{-5\sigma_{\max}(S_w)}, 10^{-10})` and compute
       :math:`p(c \mid x_i)`.
    2. Soften: :math:`q_i = \operatorname{softmax}_c(p(c \mid x_i))` (a softmax of the
       probabilities themselves, exactly as in the authors' code).
    3. ConfMix: each sample is pulled towards the "confusing" centre of its class, the
       unweighted mean of the *other* classes' means (computed before mixing),

       .. math::
           \tilde x_i = q_{i y_i}\, x_i + (1 - q_{i y_i})\,
           \frac{1}{C-1}\sum_{c \ne y_i} \mu_c .

    4. Refit the regularised LDA on :math:`\tilde x` with the *same* λ as step 1 and score

       .. math::
           \mathrm{SFDA} = \frac1N \sum_i p(y_i \mid \tilde x_i)

       (the mean posterior, without a log, as the authors' code does "in case of
       instability").

    Choices where the paper is loose: σ_max is the exact largest eigenvalue (the
    authors approximate it with 3 power-iteration steps started from ``S_w 1``; pass
    ``power_iterations=3`` for theirs; the two differ only for features whose largest
    within-class variance is below ~5, where λ is above the 1e-10 floor); covariances
    use 1/n_c per class and priors ``n_c/N`` (as the authors, via ``np.cov(bias=1)``).
    The Fisher projection of the paper never changes the posterior (see
    :func:`regularised_lda_log_proba`). The score is invariant to label renaming,
    sample order, translation and orthogonal rotation of the features, but not to their
    scale (λ depends on it). For D > N the LDA sees λ-regularised directions outside the
    span of the within-class data and the posteriors approach one-hot (an over-fit that
    is part of the method).

    Sample path: needs the samples themselves (the regularised Fisher projection is applied to
    every row and scored per sample).

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        power_iterations: ``None`` (exact σ_max) or the number of the authors' power steps.
        seed: unused (SFDA is deterministic); accepted so that every score takes it.

    Returns:
        0-d float64 tensor in ``(0, 1]`` on the features' device; higher = more transferable.

    Raises:
        ValueError: non-2-D / empty / NaN features, mismatched lengths, one class, or no
            within-class variance at all.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(90) % 3
        >>> noise = torch.randn(90, 4, generator=g, dtype=torch.float64)
        >>> near, far = noise + 0.5 * y[:, None], noise + 4.0 * y[:, None]
        >>> bool(sfda(far, y) > sfda(near, y))
        True
    """
    del seed
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    if power_iterations is not None and (isinstance(power_iterations, bool) or int(power_iterations) < 1):
        raise ValueError(f"`power_iterations` must be None or a positive integer, got {power_iterations!r}.")

    log_p, lam = regularised_lda_log_proba(x, codes, c, power_iterations=power_iterations)
    q = torch.softmax(log_p.exp(), dim=1)  # the authors' "softened" probabilities
    conf = q.gather(1, codes[:, None])  # (N, 1)
    counts = torch.bincount(codes, minlength=c).to(x.dtype)
    means = torch.zeros(c, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, codes, x) / counts[:, None]
    others = (means.sum(dim=0, keepdim=True) - means) / (c - 1)  # (C, D) mean of the other classes' means
    mixed = conf * x + (1.0 - conf) * others[codes]
    log_p2, _ = regularised_lda_log_proba(mixed, codes, c, shrinkage=lam)
    return log_p2.gather(1, codes[:, None]).exp().mean()
