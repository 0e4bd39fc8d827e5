"""Shared input checks for the transferability metrics.

Every public metric funnels its inputs through these helpers so that bad input fails
the same way everywhere: a ``ValueError`` that names the argument, says what was
wrong and how to fix it. Nothing here computes a score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "check_features",
    "check_labels",
    "check_probs",
    "check_same_length",
    "check_min_per_class",
]


def as_tensor(x: Any, name: str) -> Tensor:
    """Return ``x`` as a torch tensor (numpy arrays and sequences are converted).

    Keeps the device and the autograd graph of a tensor input.
    """
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"`{name}` is a numpy array of dtype object; pass a numeric array.")
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"`{name}` must be a torch tensor or numpy array, got {type(x).__name__}.") from err


def _check_finite(x: Tensor, name: str) -> None:
    if x.is_floating_point() or x.is_complex():
        if bool(torch.isfinite(x.detach().sum())):  # fast path: any NaN/Inf makes the sum non-finite
            return
        bad = ~torch.isfinite(x.detach())  # exact count (the sum may also overflow on finite input)
        if bool(bad.any()):
            n_bad = int(bad.sum())
            raise ValueError(
                f"`{name}` contains {n_bad} NaN/Inf value(s); remove or impute them "
                "(e.g. check the layer for overflow, or filter those samples) before scoring."
            )


def check_features(features: Any, name: str = "features") -> Tensor:
    """Validate a feature matrix and return it as float64 ``(N, D)``.

    Raises ``ValueError`` for a non-2-D input, an empty input, a non-numeric dtype or
    NaN/Inf values. The float64 cast keeps autograd (``Tensor.double``).
    """
    x = as_tensor(features, name)
    if x.ndim != 2:
        hint = " Flatten or pool it first, e.g. `x.flatten(1)`." if x.ndim > 2 else ""
        if x.ndim == 1:
            hint = " For a single feature use `x[:, None]`."
        raise ValueError(f"`{name}` must be 2-D (N, D), got shape {tuple(x.shape)}.{hint}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(x.shape)}); pass at least one sample and one feature.")
    if x.dtype == torch.bool:
        x = x.to(torch.float64)
    if x.is_complex():
        raise ValueError(f"`{name}` is complex ({x.dtype}); pass real-valued features.")
    _check_finite(x, name)
    return x.to(torch.float64)


def check_labels(
    labels: Any,
    n: int | None = None,
    name: str = "labels",
    min_classes: int = 2,
) -> tuple[Tensor, int]:
    """Validate integer class labels and remap them to ``0..C-1``.

    Any integer label set is accepted (``{3, 7, 100}`` becomes ``{0, 1, 2}``, in sorted
    order), so that results never depend on label names. A ``(N, 1)`` column is
    flattened. Returns ``(codes, C)`` with ``codes`` int64 on the input's device.

    Raises ``ValueError`` for a wrong shape, a length that does not match ``n``,
    non-integer values or fewer than ``min_classes`` classes.
    """
    y = as_tensor(labels, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D (N,) integer class labels, got shape {tuple(y.shape)}. "
            "If you have one-hot or probability rows, take `argmax(1)`."
        )
    if y.numel() == 0:
        raise ValueError(f"`{name}` is empty; pass one label per sample.")
    if n is not None and y.shape[0] != n:
        raise ValueError(
            f"`{name}` has {y.shape[0]} entries but the features have {n} rows; pass exactly one label per feature row."
        )
    if y.is_floating_point():
        _check_finite(y, name)
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError(
                f"`{name}` holds non-integer values ({y.dtype}); pass integer class ids, not scores or probabilities."
            )
    elif y.is_complex() or y.dtype == torch.bool:
        if y.dtype != torch.bool:
            raise ValueError(f"`{name}` must be integer class ids, got {y.dtype}.")
    classes, codes = torch.unique(y.detach(), sorted=True, return_inverse=True)
    c = int(classes.numel())
    if c < min_classes:
        raise ValueError(
            f"`{name}` has {c} distinct class(es) but this metric needs at least {min_classes}; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )
    return codes.to(torch.int64), c


def check_same_length(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` when ``a`` and ``b`` do not have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name_a}` has {a.shape[0]} rows but `{name_b}` has {b.shape[0]}; they must describe the same samples."
        )


def check_min_per_class(counts: Tensor, minimum: int, name: str = "labels", why: str = "") -> None:
    """Raise ``ValueError`` when some class has fewer than ``minimum`` samples."""
    low = torch.nonzero(counts < minimum).flatten()
    if low.numel():
        reason = f" ({why})" if why else ""
        raise ValueError(
            f"`{name}`: {low.numel()} class(es) have fewer than {minimum} samples{reason}; "
            f"pass at least {minimum} samples of every class or drop those classes."
        )


def check_probs(probs: Any, name: str = "source_probs", atol: float = 1e-4) -> Tensor:
    """Validate a row-stochastic matrix ``(N, C)`` and return it as float64.

    Raises ``ValueError`` for a wrong shape, NaN/Inf, negative entries or rows that do
    not sum to 1 (within ``atol``); logits must go through ``softmax`` first.
    """
    p = check_features(probs, name)
    if bool((p < 0).any()):
        raise ValueError(f"`{name}` has negative entries; pass probabilities (apply `softmax(dim=1)` to logits).")
    sums = p.sum(dim=1)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=atol, rtol=0.0)):
        worst = float((sums - 1).abs().max())
        raise ValueError(
            f"`{name}` rows must sum to 1 (worst row is off by {worst:.3g}); "
            "pass probabilities (apply `softmax(dim=1)` to logits)."
        )
    return p
