"""When a transferability score saturates or degenerates on the features at hand.

Every check has the signature ``check(features, labels, **metric_kwargs) -> str``: ``""`` when the
score means what it says, else a one-line reason naming the numbers. The reason is a
:class:`Finding` (a ``str``) whose :attr:`~Finding.flag` says what kind of failure it is:

``"saturated"``
    the score sits at its ceiling whatever the features (H-score = C − 1, an LDA posterior of 1,
    GBC = 0), so candidates cannot be told apart by it;
``"degenerate"``
    the score is inflated by a singular estimate (part of it counts directions without
    within-class variance as perfect separation).

The registry names the check of each score (:attr:`tguide.metrics.registry.MetricInfo.degeneracy`)
and :func:`tguide.select.rank` runs it on every (candidate, layer) row: a flagged row never makes a
pick and never enters the pool normalisation of NCTI / ETran.

All conditions follow from the formulas of the functionals. With ``X`` the ``(N, D)`` features,
``C`` classes, ``r_t = rank(X − mean)`` (the total scatter) and ``r_w = rank(X − class means)``
(the within-class scatter), generically ``r_t = min(D, N − 1)`` and ``r_w = min(D, N − C)``. When
``r_t > r_w`` the class means differ along ``r_t − r_w`` directions in which no class varies:

* H-score (Bao et al., ICIP 2019) whitens by the total covariance; each such direction adds one
  between-class unit of perfect separation, and when ``r_t − r_w = C − 1`` (generically
  ``D ≥ N − 1``) the score is exactly ``C − 1`` whatever the features.
* The regularised LDA of SFDA (Shao et al., ECCV 2022), also ETran's classification term
  (Gholami et al., ICCV 2023), fills the null space of ``S_w`` with ``λ·tr(S_w)/D``,
  ``λ = max(e^{−5σ_max}, 1e−10)``; for ``r_t > r_w`` (generically ``D > N − C``) the class means'
  offsets in that null space are divided by that tiny number and the posterior of the true class
  goes to 1. For D close to N − C the smallest eigenvalues of ``S_w`` are nearly 0 and the LDA,
  scored on the samples it was fitted to, already separates them: the check reads the posterior
  itself (its ceiling 1, to 1e−3) and says which case it is. Neither the paper nor the authors'
  code reduces the features first, so there is no remedy of their own: not comparable here.
* NCTI (Wang et al., ICCV 2023) runs the LDA on ``K = min(pca_dim, D, N − 1)`` principal
  components; the same happens when ``K > N − C``. The remedy is the paper's own knob: a
  smaller ``pca_dim`` (at most ``N − C``).
* GBC (Pándy et al., CVPR 2022) sums ``e^{−D_B}`` over class pairs; the log-determinant part of
  ``D_B`` grows linearly with D, so at large D every coefficient underflows and GBC = 0 for every
  model. The authors reduce the features with PCA (``gbc(..., pca_dim=64)``), which this check
  suggests.

Scores without a check: LogME (a Bayesian evidence, well defined for any N and D), the
Ledoit–Wolf H-score (the shrunk covariance is full rank), the comparable TransRate (a fixed number
of principal directions, ``r ≤ N − 1``), LEEP / NCE (source-class probabilities, no D), NLEEP,
OTCE and the baselines (held-out accuracies). TransRate on raw features grows with D by
construction; that is a property of the pool (widths that differ), declared by
:attr:`~tguide.metrics.registry.MetricInfo.width_dependent` and checked by
:func:`width_reason`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels

__all__ = ["FLAGS", "Finding", "etran", "gbc", "hscore", "ncti", "ranks", "sfda", "width_reason"]

FLAGS = ("saturated", "degenerate", "tie", "not_comparable")

_SATURATED_POSTERIOR = 1e-3  # mean true-class posterior within this of 1: "1.000" on the report
_GBC_FLOOR = 1e-12  # |GBC| below this: every Bhattacharyya coefficient has underflowed


class Finding(str):
    """A one-line reason (a ``str``) with the kind of failure in :attr:`flag`."""

    flag: str

    def __new__(cls, flag: str, text: str) -> Finding:
        if flag not in FLAGS:
            raise ValueError(f"flag must be one of {FLAGS}, got {flag!r}")
        obj = super().__new__(cls, text)
        obj.flag = flag
        return obj


def flag_of(reason: str) -> str:
    """The flag of a check's answer: ``""`` when fine, the :class:`Finding`'s flag, else ``"degenerate"``."""
    if not reason:
        return ""
    return getattr(reason, "flag", "degenerate")


def _rank_of(z: Tensor) -> int:
    """Numerical rank of ``z (N, D)``: eigenvalues of the smaller Gram matrix above
    ``λ_max · max(N, D) · ε`` (the cut of :func:`~tguide.metrics.functional.hscore.hscore`)."""
    n, d = z.shape
    g = z.T @ z if n >= d else z @ z.T
    lam = torch.linalg.eigvalsh(0.5 * (g + g.T)).clamp_min(0.0)
    if float(lam.max()) <= 0.0:
        return 0
    return int((lam > lam.max() * max(n, d) * torch.finfo(lam.dtype).eps).sum())


def _dims(n: int, d: int, threshold: int, label: str, strict: bool = False) -> str:
    """``"D=1280 ≥ N−1=199"`` when the generic condition holds, else ``"D=…, N=…"`` (a rank-deficient case)."""
    if d > threshold or (d == threshold and not strict):
        return f"D={d} {'>' if strict else '≥'} {label}={threshold}"
    return f"D={d}, N={n}"


def _inputs(features: Any, labels: Any) -> tuple[Tensor, Tensor, int]:
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    return x, codes.to(x.device), c


def ranks(features: Any, labels: Any) -> tuple[int, int]:
    """``(r_t, r_w)``: ranks of the globally centred and of the within-class centred features."""
    x, codes, c = _inputs(features, labels)
    xc = x - x.mean(dim=0, keepdim=True)
    counts = torch.bincount(codes, minlength=c).to(x.dtype)
    means = torch.zeros(c, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, codes, xc) / counts[:, None]
    return _rank_of(xc), _rank_of(xc - means[codes])


def hscore(features: Any, labels: Any, **kwargs: Any) -> str:
    """H-score: ``saturated`` when ``r_t − r_w = C − 1`` (score = C − 1; generically D ≥ N − 1),
    ``degenerate`` when ``0 < r_t − r_w < C − 1`` (generically N − C < D < N − 1)."""
    x, _, c = _inputs(features, labels)
    n, d = x.shape
    r_t, r_w = ranks(x, labels)
    free = r_t - r_w  # between-class directions without within-class variance
    if free <= 0:
        return ""
    fix = "prefer hscore_shrinkage (Ibrahim et al., WACV 2023)"
    if free >= c - 1:
        return Finding(
            "saturated",
            f"H-score saturated: {_dims(n, d, n - 1, 'N−1')}, the features span {r_t} directions and only {r_w} "
            f"vary within a class, so H-score = C−1 = {c - 1} whatever the features; {fix}",
        )
    return Finding(
        "degenerate",
        f"H-score degenerate: {_dims(n, d, n - c, 'N−C', strict=True)}, {free} of the C−1={c - 1} between-class "
        f"directions have no within-class variance and count as perfectly separated; {fix}",
    )


def _lda_check(name: str, x: Tensor, codes: Tensor, c: int, remedy: str) -> str:
    from tguide.metrics.functional.sfda import regularised_lda_log_proba

    n, d = x.shape
    log_p, lam = regularised_lda_log_proba(x, codes, c)
    posterior = float(log_p.gather(1, codes[:, None]).exp().mean())
    if posterior < 1.0 - _SATURATED_POSTERIOR:
        return ""
    r_t, r_w = ranks(x, codes)
    if r_t > r_w:
        why = (
            f"{_dims(n, d, n - c, 'N−C', strict=True)}, the within-class scatter is singular (rank {r_w}) and the "
            f"shrinkage λ={lam:.1e} does not fill it, so the LDA separates the classes perfectly"
        )
    else:
        why = (
            f"D={d} against N−C={n - c} within-class degrees of freedom, with shrinkage λ={lam:.1e} the LDA "
            "fitted and scored on the same samples separates them"
        )
    return Finding("saturated", f"{name} saturated: {why} (mean true-class posterior {posterior:.3f}); {remedy}")


_NOT_COMPARABLE = "not comparable here (neither the paper nor its reference code reduces the features)"


def sfda(features: Any, labels: Any, **_: Any) -> str:
    """SFDA: ``saturated`` when the regularised LDA's posterior of the true class averages 1 (to 1e−3),
    its ceiling; always so for ``r_t > r_w`` (generically D > N − C) with a small shrinkage, and in
    practice already for D somewhat below N − C (the LDA is scored on the samples it was fitted to)."""
    x, codes, c = _inputs(features, labels)
    return _lda_check("SFDA", x, codes, c, _NOT_COMPARABLE)


def etran(features: Any, labels: Any, *, reference_code: bool = False, **_: Any) -> str:
    """ETran's LDA term: as :func:`sfda` (the same regularised LDA); the identity-covariance LDA of
    ``reference_code=True`` has no singular estimate and no check."""
    if reference_code:
        return ""
    x, codes, c = _inputs(features, labels)
    return _lda_check("ETran (LDA term)", x, codes, c, _NOT_COMPARABLE)


def ncti(features: Any, labels: Any, *, pca_dim: int = 64, **kwargs: Any) -> str:
    """NCTI: ``degenerate`` when its LDA sees more principal components than within-class degrees of
    freedom, ``K = min(pca_dim, D, N − 1) > N − C``; the remedy is ``pca_dim ≤ N − C``."""
    x, _, c = _inputs(features, labels)
    n, d = x.shape
    k = min(int(pca_dim), d, n - 1)
    if k <= n - c:
        return ""
    return Finding(
        "degenerate",
        f"NCTI degenerate: its LDA sees K=min(pca_dim={pca_dim}, D={d}, N−1={n - 1})={k} > N−C={n - c} "
        f"components, more than the within-class scatter spans; pass ncti pca_dim ≤ {n - c} "
        "(the PCA of Wang et al., ICCV 2023)",
    )


def gbc(features: Any, labels: Any, **kwargs: Any) -> str:
    """GBC: ``saturated`` when every Bhattacharyya coefficient has underflowed, ``|GBC| < 1e−12``
    (the score is 0, perfect separation, for any features that wide)."""
    from tguide.metrics.functional.gbc import gbc as gbc_score

    x, codes, c = _inputs(features, labels)
    n, d = x.shape
    value = float(gbc_score(x, codes, **kwargs))
    if not abs(value) < _GBC_FLOOR:
        return ""
    dim = kwargs.get("pca_dim")
    width = f"D={d}" if dim is None else f"D={min(int(dim), d, n - 1)} after PCA"
    remedy = (
        "reduce the features first: gbc pca_dim=64 (the PCA of Pándy et al., CVPR 2022)"
        if dim is None
        else "a smaller pca_dim"
    )
    return Finding(
        "saturated",
        f"GBC saturated: at {width} every Bhattacharyya coefficient of the C={c} classes underflows "
        f"(GBC = {value:.1e}, the score of perfect separation); {remedy}",
    )


def width_reason(name: str, widths: Sequence[int], remedy: str = "") -> str:
    """``not_comparable`` reason for a width-dependent score over rows of different widths ``widths``."""
    distinct = sorted({int(w) for w in widths if w and not (isinstance(w, float) and math.isnan(w))})
    if len(distinct) < 2:
        return ""
    return Finding(
        "not_comparable",
        f"{name} grows with the feature width by construction and the widths here differ "
        f"(D = {', '.join(map(str, distinct))}): not comparable across them" + (f"; use {remedy}" if remedy else ""),
    )
