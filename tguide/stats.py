"""Summary statistics the studies and benchmarks report: a mean with its confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval (half-width ``nan`` for one value)."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("`values` is empty; run at least one episode.")
    if a.size < 2:
        return float(a.mean()), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean()), float(half)
