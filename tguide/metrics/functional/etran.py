"""ETran: energy-based transferability estimation (classification version).

References:
    [1] M. Gholami, M. Akbari, X. Wang, B. Kamranian, Y. Zhang, "ETran: Energy-Based
        Transferability Estimation", ICCV 2023. The authors' code:
        github.com/mgholamikn/ETran, ``metrics.py`` (``Energy_Score``, ``LDA_Score`` and
        the class ``LDA``), ``evaluate_metric.py`` (``Energy_Score(X, 0.5, 'bot')``) and
        ``tw.py`` (the min-max normalisation and the 0.15 / 0.85 weights over the pool).
    [2] W. Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a
        Self-challenging Fisher Space", ECCV 2022 (the regularised LDA reused by [1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels
from tguide.metrics.functional.sfda import regularised_lda_log_proba

__all__ = ["ETranTerms", "etran", "etran_pool", "etran_terms"]

_TAILS = ("bottom", "top")


@dataclass(frozen=True)
class ETranTerms:
    """The raw ETran terms of one model (0-d float64 tensors), both higher = better.

    ``energy``: mean ``logsumexp`` of the feature vectors over the selected tail of
    samples (a negative free energy); ``lda``: mean LDA posterior of the true class.
    """

    energy: Tensor
    lda: Tensor


def _minmax(v: Tensor) -> Tensor:
    """``(v - min) / (max - min)`` over the pool; zeros when every model agrees."""
    span = v.max() - v.min()
    return torch.zeros_like(v) if float(span) == 0.0 else (v - v.min()) / span


def _energy(x: Tensor, fraction: float, tail: str) -> Tensor:
    e = torch.logsumexp(x, dim=1)  # (N,): -E(x) with the features as logits, T = 1
    m = max(1, math.floor(fraction * x.shape[0] + 1e-9))
    chosen = torch.topk(e, m, largest=(tail == "top")).values
    return chosen.mean()


def etran_terms(
    features: Any,
    labels: Any,
    *,
    energy_fraction: float = 0.005,
    energy_tail: str = "bottom",
    reference_code: bool = False,
) -> ETranTerms:
    r"""The two raw ETran terms (Gholami et al., ICCV 2023 [1]) for a classification target.

    **Energy.** The features are read as logits; the energy of a sample is
    :math:`E(x) = -\log\sum_j e^{f_j(x)}` (temperature 1) and

    .. math::
        S_{en} = \frac1m \sum_{i \in \mathcal T} \log \sum_j e^{f_{ij}}, \qquad
        m = \max(1, \lfloor \text{energy\_fraction} \cdot N \rfloor)

    over the set :math:`\mathcal T` of the ``m`` samples with the *smallest*
    ``logsumexp`` (``energy_tail="bottom"``, i.e. the highest energy) or the largest
    (``"top"``). The defaults are the authors' reproduction script,
    ``Energy_Score(X, 0.5, 'bot')``, which keeps ``int(0.5·10)·N // 1000`` = 0.5 % of the
    samples at the bottom of the sorted ``logsumexp`` (an empty set, hence NaN, below
    N = 200 there; at least one sample here). Note that "bottom" is the *high*-energy end.

    **LDA.** :math:`S_{lda} = \frac1N \sum_i p(y_i \mid x_i)` under the regularised LDA
    of SFDA [2] (shrinkage :math:`\max(e^{-5\sigma_{\max}(S_w)}, 10^{-10})`, see
    :func:`~tguide.metrics.functional.sfda.regularised_lda_log_proba`), which is what the
    paper describes. ``reference_code=True`` reproduces the authors' code instead: their
    ``LDA`` calls ``np.linalg.eigh`` on the non-symmetric ``S_w⁻¹ S_b``, so its
    eigenvectors are orthonormal and ``coef = μ V Vᵀ = μ``; the posterior is then
    :math:`\operatorname{softmax}_c(x^\top\mu_c - \tfrac12\lVert\mu_c\rVert^2 + \log\pi_c)`,
    an identity-covariance Gaussian, whatever the shrinkage.

    The energy does not use the labels and is not invariant to translation, rotation or
    scale of the features (it is a property of the raw feature values); the LDA term is
    invariant to label renaming, sample order, translation and rotation.

    Args:
        features: ``(N, D)`` float tensor or array (penultimate-layer features).
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        energy_fraction: fraction of samples averaged in the energy term, in ``(0, 1]``.
        energy_tail: ``"bottom"`` (smallest logsumexp, the authors') or ``"top"``.
        reference_code: LDA term as in the authors' code (identity covariance).

    Returns:
        :class:`ETranTerms` of 0-d float64 tensors on the features' device.
    """
    x = check_features(features, "features")
    codes, c = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    if not (isinstance(energy_fraction, (int, float)) and 0.0 < float(energy_fraction) <= 1.0):
        raise ValueError(f"`energy_fraction` must be in (0, 1], got {energy_fraction!r}.")
    if energy_tail not in _TAILS:
        raise ValueError(f"`energy_tail` must be one of {_TAILS}, got {energy_tail!r}.")
    energy = _energy(x, float(energy_fraction), energy_tail)
    if reference_code:
        n, d = x.shape
        counts = torch.bincount(codes, minlength=c).to(x.dtype)
        xc = x - x.mean(dim=0, keepdim=True)  # the posterior is translation invariant
        means = torch.zeros(c, d, dtype=x.dtype, device=x.device).index_add_(0, codes, xc) / counts[:, None]
        logits = xc @ means.T - 0.5 * (means * means).sum(dim=1) + torch.log(counts / n)
        log_p = torch.log_softmax(logits, dim=1)
    else:
        log_p, _ = regularised_lda_log_proba(x, codes, c)
    return ETranTerms(energy=energy, lda=log_p.gather(1, codes[:, None]).exp().mean())


def etran(features: Any, labels: Any, **kwargs: Any) -> Tensor:
    r"""ETran of one model without the pool normalisation: :math:`S_{en} + S_{lda}`.

    The paper adds the terms; the authors' script min-max normalises each across the
    model pool first (:func:`etran_pool`, the ranking layer's job). The raw terms live on
    different scales (``S_lda ∈ (0, 1]``, ``S_en`` in the units of the features), so
    compare models with :func:`etran_pool`. Keyword arguments go to :func:`etran_terms`.

    Sample path: needs the samples themselves (per-sample terms of the rows); not computed
    from sufficient statistics.
    """
    t = etran_terms(features, labels, **kwargs)
    return t.energy + t.lda


def etran_pool(terms: Sequence[ETranTerms], *, weights: tuple[float, float] = (0.15, 0.85)) -> Tensor:
    r"""ETran scores ``(M,)`` of a pool of M models on one target.

    .. math::
        \mathrm{ETran}_m = w_{en}\,\hat S_{en,m} + w_{lda}\,\hat S_{lda,m}, \qquad
        \hat S_m = \frac{S_m - \min_{m'} S_{m'}}{\max_{m'} S_{m'} - \min_{m'} S_{m'}}

    with ``weights = (w_en, w_lda) = (0.15, 0.85)`` as in the authors' ``tw.py`` (the
    script behind the paper's classification table); ``(1, 1)`` is the plain sum. A term
    on which every model agrees contributes 0. Higher = more transferable.
    """
    if len(terms) == 0:
        raise ValueError("`terms` is empty; pass the ETranTerms of at least one model.")
    if len(weights) != 2:
        raise ValueError(f"`weights` must be (w_energy, w_lda), got {weights!r}.")
    device = terms[0].energy.device
    en = torch.stack([t.energy.to(device, torch.float64) for t in terms])
    lda = torch.stack([t.lda.to(device, torch.float64) for t in terms])
    return float(weights[0]) * _minmax(en) + float(weights[1]) * _minmax(lda)
