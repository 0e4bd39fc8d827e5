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

__all__ = ["transrate", "transrate_comparable", "comparable_features", "transrate_layers", "coding_rate"]


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
    return 0.5 * torch.log1p(torch.linalg.eigvalsh(a - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)).clamp_min(0)).sum()


def coding_rate(z: Tensor, eps: float = 1e-4) -> Tensor:
    r"""Coding rate :math:`R(Z, \epsilon) = \tfrac12 \log\det(I_D + Z^\top Z / (n\epsilon))` of ``z (n, D)``.

    Uses Sylvester's identity ``det(I_D + ZᵀZ/c) = det(I_n + ZZᵀ/c)`` to work on the
    smaller of the two Gram matrices. ``z`` is used as given (no centring, no checks).
    """
    n, d = z.shape
    gram = z.T @ z if n >= d else z @ z.T
    return _half_logdet_eye_plus(gram, 1.0 / (n * eps))


def _prepare(features: Any, labels: Any, eps: float) -> tuple[Tensor, Tensor, int]:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a positive finite float (the coding-rate distortion), got {eps!r}.")
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    return x, codes.to(x.device), c


def _transrate(x: Tensor, codes: Tensor, c: int, eps: float) -> Tensor:
    n, d = x.shape
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes, minlength=c).tolist()
    # the globally centred rows, grouped by class: one (N, D) copy
    z = torch.index_select(x, 0, order).sub_(x.mean(dim=0, keepdim=True))
    blocks = torch.split(z, counts)
    conditional = torch.zeros((), dtype=z.dtype, device=z.device)
    # When N > D the global ZᵀZ is the sum of the class Gram matrices: reuse the D×D ones
    # and multiply out only the rows of the classes that took the n_c×n_c route. A class
    # takes that route when it is cheaper counting its share of ZᵀZ: 2n_c²D + n_c³/3 + 2n_cD²
    # against 2n_cD² + D³/3 flops (i.e. n_c below ~0.4 D), or always when N ≤ D.
    total = torch.zeros(d, d, dtype=z.dtype, device=z.device) if n > d else None
    small_rows: list[Tensor] = []
    for zc, nc in zip(blocks, counts):
        if total is not None and 2 * nc * nc * d + nc**3 / 3 >= d**3 / 3:
            g = zc.T @ zc  # (D, D)
            if total is not None:
                total += g
        else:
            g = zc @ zc.T  # (n_c, n_c)
            if total is not None:
                small_rows.append(zc)
        conditional = conditional + (nc / n) * _half_logdet_eye_plus(g, 1.0 / (nc * eps))
    if total is not None:
        if small_rows:
            rest = torch.cat(small_rows)
            total += rest.T @ rest
        whole = _half_logdet_eye_plus(total, 1.0 / (n * eps))
    else:
        whole = _half_logdet_eye_plus(z @ z.T, 1.0 / (n * eps))
    return whole - conditional


def transrate(features: Any, labels: Any, eps: float = 1e-4) -> Tensor:
    r"""TransRate (Huang et al., ICML 2022 [1]): coding-rate estimate of I(Z; Y).

    .. math::
        \mathrm{TrR}(Z, Y) = R(Z, \epsilon) - \sum_{c=1}^{C} \frac{n_c}{n} R(Z_c, \epsilon),
        \qquad R(Z, \epsilon) = \tfrac12 \log\det\!\Big(I_D + \frac{Z^\top Z}{n\,\epsilon}\Big)

    ``Z`` is the globally centred feature matrix with ``n`` rows; ``Z_c`` holds the rows of
    that same ``Z`` in class ``c`` (not re-centred) and its coding rate uses ``n_c``. Each
    log-determinant is taken on ``ZᵀZ`` (D×D) or ``ZZᵀ`` (n×n) (Sylvester's identity),
    whichever costs less, by a Cholesky factorisation; when N > D the global D×D Gram is
    assembled from the per-class ones, so most rows are multiplied out once.

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
    x, codes, c = _prepare(features, labels, eps)
    return _transrate(x, codes, c, float(eps))


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
    r = _check_rank(rank)
    x, codes, c = _prepare(features, labels, eps)
    return _transrate(comparable_features(x, r), codes, c, float(eps))


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
        raise ValueError(
            "`features_by_layer` must be a non-empty mapping {layer name: (N, D) features}."
        )
    scores: dict[str, float] = {}
    for name, feats in features_by_layer.items():
        try:
            x, codes, c = _prepare(feats, labels, eps)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from err
        scores[str(name)] = float(_transrate(x, codes, c, float(eps)))
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))
