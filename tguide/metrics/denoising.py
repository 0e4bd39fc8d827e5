r"""Denoising transferability: how well does a denoiser trained on noise domain A suit domain B?

A family of its own, not a classification transferability score: it is not exported from
:mod:`tguide.metrics` and is never ranked together with H-score, LogME or OTCE. A is the
source domain (the one the denoiser was trained on), B the target.

Following R. Patil, "Towards transferability metrics, explored in the context of image
denoising" (IIT Hyderabad project report, 2022): train a denoiser :math:`f_A` on A; model A's
noise *as the model sees it* by the residuals on A's held-out noisy images; pass B's noisy
images through the same model; compare the two residual distributions. No clean image of B and
no training on B is needed.

.. math::
    r_A = y_A - f_A(y_A), \qquad r_B = y_B - f_A(y_B)

    d(A \to B) = SW_2(P_A, P_B)
        = \Big(\mathbb E_{\theta \sim U(S^{D-1})} W_2^2(\theta_\# P_A, \theta_\# P_B)\Big)^{1/2}

    s_A = \big(\mathbb E\, r_A^2\big)^{1/2}, \qquad
    T(A \to B) = \exp\!\big(-d(A \to B) / s_A\big) \in (0, 1]

where :math:`P_A, P_B` are the empirical distributions of the non-overlapping
``patch × patch`` residual patches (vectors of :math:`D = C\,p^2` values) and
:math:`SW_2` the sliced 2-Wasserstein distance, estimated with ``n_projections`` random
directions through POT (``ot.sliced_wasserstein_distance``; Rabin et al., SSVM 2011; Bonneel
et al., J. Math. Imaging Vis. 2015). ``method="pixel"`` uses single pixels instead (D = 1: the exact 1-D
:math:`W_2` between the residual values, ``ot.wasserstein_1d``).

Why this distance and this map:

- a Wasserstein distance compares distributions with different or disjoint supports
  (Gaussian vs impulse residuals) without fitting densities, and is in the units of the
  residual; it needs only samples, which is what a black-box model gives us (Patil 2022);
- patches rather than pixels: a model that does not fit B leaves *structured* residuals
  (unremoved correlated noise, or image detail it smoothed away); patch projections see
  spatial correlation that a per-pixel histogram cannot;
- for white Gaussian residuals of standard deviations :math:`\sigma_A, \sigma_B`, every
  projection of a patch is :math:`\mathcal N(0, \sigma^2)`, so :math:`d = |\sigma_B -
  \sigma_A|` and :math:`T = \exp(-|\sigma_B - \sigma_A| / \sigma_A)`: 1 for identical
  domains, decreasing in :math:`\sigma_B - \sigma_A`, and asymmetric (it is normalised by
  A's own residual scale :math:`s_A`, and :math:`r_B` depends on :math:`f_A`, not :math:`f_B`);
- dividing by :math:`s_A` makes the score invariant to the intensity scale of the images
  (scale both residuals by c: d and s_A both scale by c); :math:`\exp(-\cdot)` maps
  :math:`[0, \infty)` onto :math:`(0, 1]`.

For two subsets of the same domain the estimate is below 1 only by the sampling error of
:math:`SW_2` (≈ 0.01–0.03 with a few thousand patches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor

from tguide.metrics._subset import check_max_samples, stratified_subset

__all__ = [
    "DenoisingTransferResult",
    "residual_patches",
    "residual_distance",
    "denoising_transferability",
    "denoiser_residuals",
    "score_denoiser",
]

METHODS = ("sliced", "pixel")


@dataclass(frozen=True)
class DenoisingTransferResult:
    """Score ``T(A→B)`` (0-d float64), the distance ``d``, A's residual scale ``s_A``, and timing."""

    score: Tensor
    distance: Tensor
    scale: Tensor
    seconds: float = 0.0


def _as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        raise ValueError(f"`{name}` must be a float tensor of residuals, got dtype {t.dtype}")
    if t.dim() not in (2, 4):
        raise ValueError(
            f"`{name}` must be residual images (N, C, H, W) or patch vectors (N, D), got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"`{name}` is empty; pass at least one residual image")
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` contains NaN or Inf; check the denoiser's output")
    return t.to(torch.float64)


def residual_patches(residuals: Tensor, patch: int = 8) -> Tensor:
    """Non-overlapping ``patch × patch`` patches of ``residuals (N, C, H, W)`` → ``(M, C·patch²)``.

    A ``(N, D)`` input is returned as it is (already vectors). Borders that do not fill a
    whole patch are dropped.
    """
    r = _as_tensor(residuals, "residuals")
    if r.dim() == 2:
        return r
    n, c, h, w = r.shape
    if patch < 1 or patch > min(h, w):
        raise ValueError(f"patch must be in [1, min(H, W)] = [1, {min(h, w)}], got {patch}")
    r = r[..., : h - h % patch, : w - w % patch]
    p = r.unfold(2, patch, patch).unfold(3, patch, patch)  # (N, C, H/p, W/p, p, p)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * patch * patch)


def _subsample(x: Tensor, k: int | None, seed: int) -> Tensor:
    """A seeded random subset of ``k`` rows (one class: the same draw as every ``max_samples``)."""
    if k is None or x.shape[0] <= k:
        return x
    return x[stratified_subset(torch.zeros(x.shape[0], dtype=torch.int64), k, seed).to(x.device)]


def residual_distance(
    source_residuals: Tensor,
    target_residuals: Tensor,
    *,
    method: str = "sliced",
    patch: int = 8,
    n_projections: int = 128,
    max_patches: int | None = 8192,
    seed: int = 0,
) -> Tensor:
    r"""Distance :math:`d(A, B)` between two residual distributions (0-d float64).

    ``method="sliced"``: :math:`SW_2` between the patch vectors (``patch``; POT, ``n_projections``
    directions drawn with ``seed``). ``method="pixel"``: exact 1-D :math:`W_2` between the residual
    values. At most ``max_patches`` patches per side (``16 · max_patches`` pixel values for
    ``"pixel"``) enter the distance, a seeded random subset (``None``: all of them). The old
    name ``max_samples`` of this cap is deprecated: it counts patches, not samples.
    """
    import ot

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    cap = check_max_samples(max_patches, "max_patches")
    if method == "pixel":
        pixels = cap and cap * 16
        a = _subsample(_as_tensor(source_residuals, "source_residuals").reshape(-1, 1), pixels, seed)
        b = _subsample(_as_tensor(target_residuals, "target_residuals").reshape(-1, 1), pixels, seed + 1)
        w2 = ot.wasserstein_1d(a, b, p=2)
        return torch.as_tensor(w2, dtype=torch.float64).reshape(()).clamp(min=0).sqrt()
    pa = residual_patches(_as_tensor(source_residuals, "source_residuals"), patch)
    pb = residual_patches(_as_tensor(target_residuals, "target_residuals"), patch)
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(
            f"`source_residuals` and `target_residuals` give patch vectors of different sizes "
            f"{pa.shape[1]} and {pb.shape[1]}: use the same channels and patch size on both sides"
        )
    pa, pb = _subsample(pa, cap, seed), _subsample(pb, cap, seed + 1)
    d = ot.sliced_wasserstein_distance(pa, pb, n_projections=int(n_projections), p=2, seed=int(seed))
    return torch.as_tensor(d, dtype=torch.float64)


@overload
def denoising_transferability(
    source_residuals: Tensor,
    target_residuals: Tensor,
    *,
    method: str = ...,
    patch: int = ...,
    n_projections: int = ...,
    max_patches: int | None = ...,
    seed: int = ...,
    return_result: Literal[False] = ...,
) -> Tensor: ...


@overload
def denoising_transferability(
    source_residuals: Tensor,
    target_residuals: Tensor,
    *,
    method: str = ...,
    patch: int = ...,
    n_projections: int = ...,
    max_patches: int | None = ...,
    seed: int = ...,
    return_result: Literal[True],
) -> DenoisingTransferResult: ...


@overload
def denoising_transferability(
    source_residuals: Tensor,
    target_residuals: Tensor,
    *,
    method: str = ...,
    patch: int = ...,
    n_projections: int = ...,
    max_patches: int | None = ...,
    seed: int = ...,
    return_result: bool,
) -> Tensor | DenoisingTransferResult: ...


def denoising_transferability(
    source_residuals: Tensor,
    target_residuals: Tensor,
    *,
    method: str = "sliced",
    patch: int = 8,
    n_projections: int = 128,
    max_patches: int | None = 8192,
    seed: int = 0,
    return_result: bool = False,
) -> Tensor | DenoisingTransferResult:
    r"""Transferability :math:`T(A \to B) = \exp(-d(A, B) / s_A)` in (0, 1]; higher = more transferable.

    Args:
        source_residuals: residuals of A's model on A's held-out noisy images,
            ``noisy − denoised``, ``(N_A, C, H, W)`` (or patch vectors ``(N_A, D)``).
        target_residuals: residuals of the *same* model on B's noisy images, ``(N_B, C, H', W')``.
        method, patch, n_projections, max_patches, seed: see :func:`residual_distance`.
        return_result: return a :class:`DenoisingTransferResult` (score, distance, scale).

    Returns:
        0-d float64 tensor (or the result dataclass).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ra = 0.1 * torch.randn(16, 1, 32, 32, generator=g)
        >>> rb = 0.2 * torch.randn(16, 1, 32, 32, generator=g)   # twice A's noise: exp(-1)
        >>> round(float(denoising_transferability(ra, rb)), 1)
        0.4
    """
    a = _as_tensor(source_residuals, "source_residuals")
    _as_tensor(target_residuals, "target_residuals")
    scale = a.pow(2).mean().sqrt()
    if scale <= 0:
        raise ValueError(
            "`source_residuals` is all zeros: A's model returned its input unchanged (or the images are "
            "noise-free), so A's residual scale is 0; check the model and A's noise"
        )
    d = residual_distance(
        source_residuals,
        target_residuals,
        method=method,
        patch=patch,
        n_projections=n_projections,
        max_patches=max_patches,
        seed=seed,
    )
    score = torch.exp(-d / scale)
    if return_result:
        return DenoisingTransferResult(score=score, distance=d, scale=scale)
    return score


@overload
def denoiser_residuals(model: Callable[[Tensor], Tensor], noisy: Tensor, batch_size: int = ...) -> Tensor: ...


@overload
def denoiser_residuals(
    model: Callable[[Tensor], Tensor], noisy: list[Tensor], batch_size: int = ...
) -> list[Tensor]: ...


@overload
def denoiser_residuals(
    model: Callable[[Tensor], Tensor], noisy: Tensor | list[Tensor], batch_size: int = ...
) -> Tensor | list[Tensor]: ...


@torch.no_grad()
def denoiser_residuals(
    model: Callable[[Tensor], Tensor], noisy: Tensor | list[Tensor], batch_size: int = 16
) -> Tensor | list[Tensor]:
    """Residuals ``noisy − model(noisy)``, the model in eval mode, without gradients.

    ``noisy`` is ``(N, C, H, W)`` (run in batches of ``batch_size``; returns ``(N, C, H, W)``) or a
    list of ``(C, H, W)`` images of any sizes (run one by one; returns a list of ``(C, H, W)``).
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        device = next(iter(model.parameters())).device if hasattr(model, "parameters") else torch.device("cpu")
    except StopIteration:
        device = torch.device("cpu")
    try:
        if isinstance(noisy, (list, tuple)):
            return [x - model(x[None].to(device))[0].to(x.device) for x in noisy]
        out = [x - model(x.to(device)).to(x.device) for x in noisy.split(batch_size)]
        return torch.cat(out)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def score_denoiser(
    model: Callable[[Tensor], Tensor],
    source_images: Tensor | list[Tensor],
    target_images: Tensor | list[Tensor],
    *,
    source_residuals: Tensor | None = None,
    patch: int = 8,
    **kwargs,
) -> DenoisingTransferResult:
    """Run A's ``model`` on A's held-out noisy images and on B's noisy images, and score A → B.

    ``source_images`` (A's held-out noisy images) / ``target_images`` (B's noisy images):
    ``(N, C, H, W)`` tensors or lists of ``(C, H, W)`` images. Pass ``source_residuals`` (A's
    residual patches, cached) to skip the A side. ``kwargs`` go to
    :func:`denoising_transferability`. ``seconds`` is the wall time of the whole call.
    """
    t0 = time.perf_counter()

    def patches(images: Tensor | list[Tensor]) -> Tensor:
        res = denoiser_residuals(model, images)
        if isinstance(res, list):
            return torch.cat([residual_patches(r[None], patch) for r in res])
        return residual_patches(res, patch)

    pa = source_residuals if source_residuals is not None else patches(source_images)
    pb = patches(target_images)
    result = denoising_transferability(pa, pb, patch=patch, return_result=True, **kwargs)
    return DenoisingTransferResult(result.score, result.distance, result.scale, time.perf_counter() - t0)
