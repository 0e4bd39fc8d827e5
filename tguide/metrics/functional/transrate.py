"""TransRate: coding-rate mutual information between features and labels.

Reference:
    [1] L.-K. Huang, J. Huang, Y. Rong, Q. Yang, Y. Wei, "Frustratingly Easy
        Transferability Estimation", ICML 2022.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels
from tguide.metrics.statistics import ClassGramStatistics

__all__ = [
    "transrate",
    "transrate_comparable",
    "transrate_from_statistics",
    "transrate_comparable_from_statistics",
    "comparable_features",
    "transrate_layers",
    "coding_rate",
]


def _half_logdet_eye_plus(gram: Tensor, scale: float) -> Tensor:
    """``½ logdet(I + scale · gram)`` for a symmetric PSD ``gram``, by Cholesky.

    ``I + scale·gram`` is SPD with every eigenvalue ≥ 1, so Cholesky is safe; the
    eigenvalue route is the fallback should roundoff ever make it fail.
    """
    a = scale * 0.5 * (gram + gram.T)
    a.diagonal().add_(1.0)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.log(chol.diagonal()).sum()
    return (
        0.5
        * torch.log1p(
            torch.linalg.eigvalsh(a - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)).clamp_min(0)
        ).sum()
    )


def coding_rate(z: Tensor, eps: float = 1e-4) -> Tensor:
    r"""Coding rate :math:`R(Z, \epsilon) = \tfrac12 \log\det(I_D + Z^\top Z / (n\epsilon))` of ``z (n, D)``.

    Uses Sylvester's identity ``det(I_D + ZᵀZ/c) = det(I_n + ZZᵀ/c)`` to work on the
    smaller of the two Gram matrices. ``z`` is used as given (no centring, no checks).
    """
    n, d = z.shape
    gram = z.T @ z if n >= d else z @ z.T
    return _half_logdet_eye_plus(gram, 1.0 / (n * eps))


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and float(eps) > 0):
        raise ValueError(f"`eps` must be a positive finite float (the coding-rate distortion), got {eps!r}.")
    return float(eps)


def _statistics(features: Any, labels: Any, eps: Any) -> ClassGramStatistics:
    _check_eps(eps)
    x = check_features(features, "features")
    check_labels(labels, x.shape[0], "labels", min_classes=2)
    return ClassGramStatistics.from_samples(x, labels)


def _need_classes(stats: ClassGramStatistics) -> None:
    c = stats.num_classes()
    if c < 2:
        raise ValueError(
            f"`labels` has {c} distinct class(es) but this metric needs at least 2; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )


def _rate_gap_grams(n: int, counts: list[int], grams: Tensor, eps: float) -> Tensor:
    """``R(Z) − Σ_c (n_c/n) R(Z_c)`` from the class Grams about the global mean ``grams (C, D, D)``
    (``ZᵀZ = Σ_c G_c``, ``Z_cᵀZ_c = G_c``)."""
    whole = _half_logdet_eye_plus(grams.sum(dim=0), 1.0 / (n * eps))
    conditional = torch.zeros((), dtype=grams.dtype, device=grams.device)
    for g, nc in zip(grams, counts):
        conditional = conditional + (nc / n) * _half_logdet_eye_plus(g, 1.0 / (nc * eps))
    return whole - conditional


def _rate_gap_rows(z: Tensor, codes: Tensor, c: int, eps: float) -> Tensor:
    """The same from the globally centred rows ``z (n, D)`` for n ≤ D: every log-determinant on
    an n×n or n_c×n_c Gram (Sylvester's identity)."""
    n = z.shape[0]
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes, minlength=c).tolist()
    conditional = torch.zeros((), dtype=z.dtype, device=z.device)
    for zc, nc in zip(torch.split(z[order], counts), counts):
        conditional = conditional + (nc / n) * _half_logdet_eye_plus(zc @ zc.T, 1.0 / (nc * eps))
    return _half_logdet_eye_plus(z @ z.T, 1.0 / (n * eps)) - conditional


def _class_grams(stats: ClassGramStatistics) -> tuple[int, list[int], Tensor]:
    """``n``, the class counts and the class Grams about the global mean
    ``G_c = Σ_{i∈c} a_iaᵢᵀ + n_c e_c e_cᵀ`` ``(C, D, D)``, ``e_c = mean_c − mean``."""
    cls = stats.part("c")
    n = cls["n"].sum()
    e = cls["mean"] - (cls["n"][:, None] * cls["mean"]).sum(dim=0) / n
    grams = cls["m2"] + cls["n"][:, None, None] * e[:, :, None] * e[:, None, :]
    return int(n), [int(v) for v in cls["n"].tolist()], grams


def transrate_from_statistics(stats: ClassGramStatistics, eps: float = 1e-4) -> Tensor:
    r"""TransRate (:func:`transrate`) from :class:`~tguide.metrics.statistics.ClassGramStatistics`.

    From sufficient statistics only: ``R(Z) − Σ_c (n_c/n) R(Z_c)`` with ``ZᵀZ = Σ_c G_c`` and
    ``Z_cᵀZ_c = G_c``, the class Grams about the global mean (from the class counts, means and
    centred Grams), each ``½ logdet(I + G/(mε))`` by Cholesky; for n ≤ D the statistics keep the
    rows and every log-determinant is taken on the n×n / n_c×n_c Gram instead.
    """
    eps = _check_eps(eps)
    _need_classes(stats)
    if stats.rows is not None:
        x = stats.rows[0]
        codes, _, c = stats.labels_codes()
        return _rate_gap_rows(x - x.mean(dim=0, keepdim=True), codes, c, eps)
    n, counts, grams = _class_grams(stats)
    return _rate_gap_grams(n, counts, grams, eps)


def transrate(features: Any, labels: Any, eps: float = 1e-4) -> Tensor:
    r"""TransRate (Huang et al., ICML 2022 [1]): coding-rate estimate of I(Z; Y).

    .. math::
        \mathrm{TrR}(Z, Y) = R(Z, \epsilon) - \sum_{c=1}^{C} \frac{n_c}{n} R(Z_c, \epsilon),
        \qquad R(Z, \epsilon) = \tfrac12 \log\det\!\Big(I_D + \frac{Z^\top Z}{n\,\epsilon}\Big)

    ``Z`` is the globally centred feature matrix with ``n`` rows; ``Z_c`` holds the rows of
    that same ``Z`` in class ``c`` (not re-centred) and its coding rate uses ``n_c``. Each
    log-determinant is taken on ``ZᵀZ`` (D×D) or ``ZZᵀ`` (n×n) (Sylvester's identity),
    by a Cholesky factorisation. Computed from sufficient statistics
    (:func:`transrate_from_statistics`: the per-class counts, means and centred Grams).

    Notes:
        * The authors' reference code weights the class terms by ``1/C`` instead of
          ``n_c/n``; the two agree for balanced classes. The slides of [1] write ``n``
          instead of ``n_c`` inside the class coding rate; here ``R(Z_c)`` is the coding
          rate of the class's own ``n_c`` rows, as in the reference code.
        * Because the class blocks are not re-centred, ``R(Z_c)`` keeps the offset of the
          class mean: TransRate rewards classes that span different directions of the
          centred feature space, and scores near 0 classes that differ only by their
          means along one shared direction (e.g. two well separated clusters on a line).
        * The value depends on the feature scale through ``eps``; compare layers or
          models on features of a similar scale, or normalise them first.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        eps: distortion ε > 0 of the coding rate.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Example:
        >>> import math, torch
        >>> y = torch.arange(9) % 3
        >>> f = torch.nn.functional.one_hot(y).double()  # class c sits at e_c
        >>> round(float(transrate(f, y, eps=1.0)), 12) == round(math.log(4 / 3) - 0.5 * math.log(5 / 3), 12)
        True
    """
    return transrate_from_statistics(_statistics(features, labels, eps), eps)


def _check_rank(rank: Any) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer (principal components kept), got {rank!r}.")
    return int(rank)


def comparable_features(x: Tensor, rank: int = 32) -> Tensor:
    r"""Centred features projected on their top ``r`` principal axes, scaled to unit mean variance.

    With ``Z`` the centred ``x (N, D)``, ``S = ZᵀZ/N = V Λ Vᵀ`` and ``r = min(rank, N − 1, D)``,
    returns ``Z V_r / \sqrt{\bar\lambda_r}`` ``(N, r)`` where ``\bar\lambda_r`` is the mean of the
    top ``r`` eigenvalues, so that ``tr(cov) = r``. Rotation-, translation- and scale-invariant:
    only the shape of the top-``r`` spectrum and the class structure in it remain. Constant
    features raise ``ValueError``. (Eigendecomposition of the smaller Gram matrix; no checks.)
    """
    n, d = x.shape
    z = x - x.mean(dim=0, keepdim=True)
    r = max(1, min(rank, n - 1, d))
    if n >= d:
        g = z.T @ z
        lam, v = torch.linalg.eigh(0.5 * (g + g.T))  # ascending
        lam, v = lam.flip(0)[:r].clamp_min(0), v.flip(1)[:, :r]
        proj = z @ v  # (N, r)
    else:
        g = z @ z.T
        lam, u = torch.linalg.eigh(0.5 * (g + g.T))
        lam, u = lam.flip(0)[:r].clamp_min(0), u.flip(1)[:, :r]
        proj = u * torch.sqrt(lam)[None, :]  # Z V_r = U_r Σ_r
    mean_var = lam.sum() / (n * r)
    if float(mean_var) <= float(torch.finfo(x.dtype).eps) * float((z * z).sum() / n + 1e-300):
        raise ValueError("`features` have no variance (every row is the same); no class structure to score.")
    return proj / torch.sqrt(mean_var)


def transrate_comparable(features: Any, labels: Any, rank: int = 32, eps: float = 0.1) -> Tensor:
    r"""Width- and scale-comparable TransRate: :func:`transrate` on :func:`comparable_features`.

    .. math::
        \mathrm{TrR}_r(Z, Y) = \mathrm{TrR}ig(Z V_r / \sqrt{ar\lambda_r},\, Y;\ \epsilonig)

    with ``V_r`` the top ``r`` principal axes of the centred features and ``ar\lambda_r`` their
    mean variance (:func:`comparable_features`), so that ``ε`` is relative to the feature scale.

    Why: the paper's TransRate on raw features grows with the width D (every extra direction with
    variance above ε adds to both coding rates, and with few samples per class the class terms
    cannot keep up) and with ‖f‖²/ε, so a 256-d layer outscores an 84-d one whatever their
    transfer accuracy. Fixing the number of directions (``rank``) and the scale makes layers
    and models of different widths comparable: the same information embedded in 64, 256 or
    1024 dimensions and scaled by any factor gets the same score (see the tests). Use it to
    compare layers or models; use :func:`transrate` (the paper's formula) to reproduce
    published numbers. ``rank`` should not exceed the smallest width compared; when
    ``N − 1`` or D is smaller, ``r = min(rank, N − 1, D)``.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, at least 2 classes.
        rank: principal directions kept (default 32).
        eps: distortion relative to the mean variance of those directions (default 0.1: directions
            with less than a tenth of the mean variance count little, so weak noise directions
            picked up at larger widths barely move the score).

    Returns:
        0-d float64 tensor; higher = more transferable.
    """
    return transrate_comparable_from_statistics(_statistics(features, labels, eps), rank, eps)


def transrate_comparable_from_statistics(stats: ClassGramStatistics, rank: int = 32, eps: float = 0.1) -> Tensor:
    r""":func:`transrate_comparable` from :class:`~tguide.metrics.statistics.ClassGramStatistics`.

    From sufficient statistics only: the top-``r`` principal axes ``V_r`` of ``ZᵀZ = Σ_c G_c``
    and the projected class Grams ``V_rᵀ G_c V_r / λ̄_r`` (the projected features have mean 0),
    then the coding-rate gap of :func:`transrate_from_statistics` on them. For n ≤ D (kept
    rows) the projection :func:`comparable_features` of the rows.
    """
    r = _check_rank(rank)
    eps = _check_eps(eps)
    _need_classes(stats)
    if stats.rows is not None:
        x = stats.rows[0]
        codes, _, c = stats.labels_codes()
        proj = comparable_features(x, r)  # (n, r), r < n
        order = torch.argsort(codes, stable=True)
        counts = torch.bincount(codes, minlength=c).tolist()
        grams = torch.stack([zc.T @ zc for zc in torch.split(proj[order], counts)])
        return _rate_gap_grams(x.shape[0], counts, grams, eps)
    n, counts, grams = _class_grams(stats)
    d = grams.shape[1]
    total = grams.sum(dim=0)
    r = max(1, min(r, n - 1, d))
    lam, v = torch.linalg.eigh(0.5 * (total + total.T))
    lam, v = lam.flip(0)[:r].clamp_min(0), v.flip(1)[:, :r]
    mean_var = lam.sum() / (n * r)
    if float(mean_var) <= float(torch.finfo(total.dtype).eps) * float(total.diagonal().sum() / n + 1e-300):
        raise ValueError("`features` have no variance (every row is the same); no class structure to score.")
    return _rate_gap_grams(n, counts, v.T @ grams @ v / mean_var, eps)


def transrate_layers(
    features_by_layer: Mapping[str, Any],
    labels: Any,
    eps: float = 1e-4,
) -> dict[str, float]:
    """TransRate of every layer, for layer selection as in [1].

    Args:
        features_by_layer: layer name → ``(N, D_layer)`` features of the same N samples
            (higher-dimensional activations must be flattened or pooled first).
        labels: ``(N,)`` integer class ids shared by all layers.
        eps: distortion ε of the coding rate.

    Returns:
        ``{layer: score}`` ordered from the highest score (the layer to transfer) down;
        ties keep the input order.

    Raises:
        ValueError: an empty mapping, or any layer's features failing the checks of
            :func:`transrate` (the message names the layer).
    """
    if not isinstance(features_by_layer, Mapping) or len(features_by_layer) == 0:
        raise ValueError("`features_by_layer` must be a non-empty mapping {layer name: (N, D) features}.")
    scores: dict[str, float] = {}
    for name, feats in features_by_layer.items():
        try:
            stats = _statistics(feats, labels, eps)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from err
        scores[str(name)] = float(transrate_from_statistics(stats, eps))
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))
