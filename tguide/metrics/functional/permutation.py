r"""Label permutations and the arithmetic of a label-shuffle null (a leaf: torch only).

A raw score mixes the signal (how much the features know about the target labels) with
terms that depend only on the sample size, the number of classes and the width of the
features. Shuffling the target labels keeps all of those and destroys the signal, so the
score over ``P`` label permutations is its no-information level on exactly this data. With
the observed score ``s`` and the null scores ``s_1 … s_P``:

.. math::
    \mu_0 = \tfrac1P \sum_p s_p, \qquad
    \sigma_0 = \sqrt{\tfrac1{P-1}\textstyle\sum_p (s_p - \mu_0)^2}, \qquad
    z = \frac{s - \mu_0}{\sigma_0}, \qquad
    p = \frac{1 + \#\{p: s_p \ge s\}}{1 + P}

(a one-sided permutation p-value, higher score = more transferable; Phipson & Smyth,
Stat. Appl. Genet. Mol. Biol. 2010). ``score − μ₀`` is the bias-corrected score.

The metric modules draw their permutations here (``correction="null"``);
:func:`tguide.metrics.null.label_shuffle_null` builds on the same pieces for any metric.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CORRECTIONS", "NullCalibrated", "calibrate", "check_correction", "label_permutations"]

CORRECTIONS = ("none", "null", "miller_madow")
"""The bias corrections of the plug-in conditional entropies (``correction=`` of OTCE and NCE)."""


@dataclass(frozen=True)
class NullCalibrated:
    """A score next to its label-shuffle null.

    Attributes:
        score: 0-d float64, the score on the real labels.
        null_mean, null_std: 0-d float64, mean and standard deviation (``P − 1`` normalised) of
            the score over the label permutations.
        z: 0-d float64, ``(score − null_mean) / null_std`` (``0`` when both the difference and
            the spread are 0, ``±inf`` when only the spread is).
        p_value: 0-d float64, ``(1 + #{null ≥ score}) / (1 + P)``.
        null: ``(P,)`` float64, the null scores.
    """

    score: Tensor
    null_mean: Tensor
    null_std: Tensor
    z: Tensor
    p_value: Tensor
    null: Tensor

    @property
    def corrected(self) -> Tensor:
        """``score − null_mean``: the score above its no-information level."""
        return self.score - self.null_mean

    def as_dict(self) -> dict[str, Tensor]:
        """``{"score", "corrected", "z", "p_value", "null_mean", "null_std"}`` (loggable scalars)."""
        return {
            "score": self.score,
            "corrected": self.corrected,
            "z": self.z,
            "p_value": self.p_value,
            "null_mean": self.null_mean,
            "null_std": self.null_std,
        }


def calibrate(score: Tensor, null: Tensor) -> NullCalibrated:
    """Build a :class:`NullCalibrated` from a score and its null sample ``(P,)``."""
    s = torch.as_tensor(score, dtype=torch.float64).detach()
    null = torch.as_tensor(null, dtype=torch.float64).detach().flatten().to(s.device)
    if null.numel() < 2:
        raise ValueError(f"the null needs at least 2 permutations, got {null.numel()}.")
    mean = null.mean()
    std = null.std(unbiased=True)
    diff = s - mean
    # spreads at rounding level count as 0: the null is then a point mass
    tiny = 64 * torch.finfo(torch.float64).eps * max(1.0, float(mean.abs()))
    if float(std) <= tiny:
        z = torch.zeros_like(s) if abs(float(diff)) <= tiny else torch.sign(diff) * math.inf
    else:
        z = diff / std
    p = (1.0 + (null >= s - tiny).sum().to(torch.float64)) / (1.0 + null.numel())
    return NullCalibrated(score=s, null_mean=mean, null_std=std, z=z, p_value=p, null=null)


def label_permutations(n: int, n_perm: int, seed: int = 0, device: torch.device | str | None = None) -> Tensor:
    """``(n_perm, n)`` int64 permutations of ``0..n-1`` from a private generator seeded by ``seed``.

    Row ``p`` relabels sample ``j`` with the label of sample ``perm[p, j]``. The same
    ``(n, n_perm, seed)`` always gives the same rows, whatever the global RNG state.
    """
    if isinstance(n_perm, bool) or not isinstance(n_perm, numbers.Integral) or n_perm < 2:
        raise ValueError(f"`n_perm` must be an integer ≥ 2, got {n_perm!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    gen = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(int(n), generator=gen) for _ in range(int(n_perm))])
    return perms.to(device) if device is not None else perms


def check_correction(correction: str, n_perm: int) -> None:
    """``ValueError`` for an unknown ``correction`` or, with ``"null"``, an ``n_perm`` below 2."""
    if correction not in CORRECTIONS:
        raise ValueError(f"`correction` must be one of {CORRECTIONS}, got {correction!r}.")
    if correction == "null" and (isinstance(n_perm, bool) or not isinstance(n_perm, numbers.Integral) or n_perm < 2):
        raise ValueError(f"`n_perm` must be an integer ≥ 2 for correction='null', got {n_perm!r}.")
