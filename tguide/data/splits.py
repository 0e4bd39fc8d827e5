"""The one seeded, class-stratified split of a labelled set into parts (train / val / test).

Within each class (its indices in sample order) the indices are permuted by
``numpy.random.default_rng([seed, class])`` and dealt into parts by per-class counts or
fractions. Every part keeps the class proportions, and a class's split depends only on the seed,
the class id and the class's own samples (adding a class does not reshuffle the others).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from tguide.errors import TGuideError

__all__ = ["SPLITS", "SPLIT_SEED", "SplitError", "SplitSpec", "stratified_split"]

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0

#: per-class counts (ints), fractions summing to 1 (floats), or ``class size -> per-class counts``
SplitSpec = Sequence[int] | Sequence[float] | Callable[[int], Sequence[int]]


class SplitError(TGuideError, ValueError):
    """A split that cannot be made (bad counts or fractions, a class too small for its counts)."""


def _is_counts(spec: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in spec)


def _check_spec(spec: SplitSpec) -> None:
    if callable(spec):
        return
    values = list(spec)
    if not values:
        raise SplitError(
            "split spec is empty; give per-class counts such as (20, 20, 100) or fractions such as (0.8, 0.1, 0.1)"
        )
    if _is_counts(values):
        if any(v < 0 for v in values):
            raise SplitError(f"split counts must be ≥ 0, got {values}")
    elif any(float(f) < 0 for f in values) or abs(sum(float(f) for f in values) - 1) > 1e-6:
        raise SplitError(f"split fractions must be ≥ 0 and sum to 1, got {values}")


def class_counts(n: int, spec: SplitSpec) -> list[int]:
    """How many of a class of ``n`` samples go to each part under ``spec``.

    Fractions cut the class at ``round((f_1 + ... + f_j) · n)`` (Python's round: half to even).
    """
    _check_spec(spec)
    if callable(spec):
        return [int(v) for v in spec(n)]
    values = list(spec)
    if _is_counts(values):
        return [int(v) for v in values]
    cuts = [int(round(sum(float(f) for f in values[: j + 1]) * n)) for j in range(len(values))]
    return [b - a for a, b in zip([0, *cuts[:-1]], cuts)]


def stratified_split(
    labels: Sequence[int] | Tensor | np.ndarray, spec: SplitSpec, seed: int = SPLIT_SEED
) -> tuple[list[int], ...]:
    """Seeded, class-stratified split of ``range(N)``: one sorted index list per part.

    Args:
        labels: ``(N,)`` class ids.
        spec: per-class **counts** ``(n_1, ..., n_k)`` (ints: the first ``n_1`` of the class's
            permutation go to part 1, the next ``n_2`` to part 2, ...; the rest is unused), or
            **fractions** ``(f_1, ..., f_k)`` summing to 1 (every sample lands in one part), or a
            **function** ``class size -> counts``.
        seed: the class ``c``'s permutation is ``numpy.random.default_rng([seed, c])``.

    Raises :class:`SplitError` for bad counts or fractions, or a class smaller than its counts.
    """
    _check_spec(spec)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    parts: list[list[int]] = [] if callable(spec) else [[] for _ in list(spec)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        counts = class_counts(idx.size, spec)
        if any(v < 0 for v in counts) or sum(counts) > idx.size:
            raise SplitError(
                f"class {int(c)} has {idx.size} samples, fewer than the {' + '.join(map(str, counts))} the split needs"
            )
        perm = idx[np.random.default_rng([int(seed), int(c)]).permutation(idx.size)]
        parts.extend([] for _ in range(len(counts) - len(parts)))
        start = 0
        for j, n in enumerate(counts):
            parts[j].extend(perm[start : start + n].tolist())
            start += n
    return tuple(sorted(p) for p in parts)
