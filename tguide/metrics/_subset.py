"""``max_samples``, the one way a metric subsamples: a seeded, class-stratified random subset.

Every metric argument named ``max_samples`` means the same thing: when there are more
samples than that, keep :func:`stratified_subset` of them. Each class keeps at least one
sample and otherwise its share of the subset, so no class vanishes from a score because of
subsampling, and the same ``(labels, max_samples, seed)`` always gives the same rows.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from tguide.metrics._validate import check_labels

__all__ = ["stratified_subset", "check_max_samples"]


def check_max_samples(max_samples: Any, name: str = "max_samples", minimum: int = 1) -> int | None:
    """``max_samples`` as an ``int`` (``None``: every sample); ``ValueError`` unless an integer ≥ ``minimum``."""
    if max_samples is None:
        return None
    if isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral) or max_samples < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum} or None (use every sample), got {max_samples!r}.")
    return int(max_samples)


def _allocate(counts: list[int], m: int) -> list[int]:
    """Samples per class: proportional to the class sizes, at least 1 each, summing to ``m``.

    Classes whose share ``m·n_c/N`` is below 1 get exactly 1 and the others share the rest in
    proportion to their sizes (repeated until every share is ≥ 1), rounded by largest
    remainders (ties to the smaller class index). Exact integer arithmetic; never more than a
    class holds. Requires ``C ≤ m < N``.
    """
    c = len(counts)
    small = [False] * c
    while True:
        m_rest = m - sum(small)
        n_rest = sum(n for n, s in zip(counts, small) if not s)
        grown = [k for k in range(c) if not small[k] and m_rest * counts[k] < n_rest]
        if not grown:
            break
        for k in grown:
            small[k] = True
    alloc = [1 if small[k] else (m_rest * counts[k]) // n_rest for k in range(c)]
    big = [k for k in range(c) if not small[k]]
    order = sorted(big, key=lambda k: (-((m_rest * counts[k]) % n_rest), k))
    for k in order[: m - sum(alloc)]:
        alloc[k] += 1
    return alloc


def stratified_subset(labels: Any, max_samples: int | None, seed: int = 0) -> Tensor:
    """Indices of a seeded, class-stratified random subset of at most ``max_samples`` samples.

    With ``N ≤ max_samples`` (or ``max_samples=None``) every index is returned. Otherwise
    exactly ``max_samples`` indices, shared between the ``C`` classes in proportion to their
    sizes (largest remainders) except that every class keeps at least one sample; each class's
    samples are drawn uniformly at random from a private generator seeded by ``seed`` (the
    global RNG is untouched).

    Args:
        labels: ``(N,)`` integer class ids, any label set (one class is allowed: then a plain
            uniform random subset).
        max_samples: the subset size, or ``None`` for all samples.
        seed: seed of the draw; the same ``(labels, max_samples, seed)`` gives the same subset.

    Returns:
        ``(min(N, max_samples),)`` int64 indices in increasing order, on the labels' device.

    Raises:
        ValueError: ``max_samples`` not a positive integer, or smaller than the number of classes
            (a subset cannot then keep every class: raise it or drop classes).

    Example:
        >>> import torch
        >>> y = torch.tensor([0] * 90 + [1] * 9 + [2])  # sorted by class, one rare class
        >>> idx = stratified_subset(y, 10, seed=0)
        >>> torch.bincount(y[idx]).tolist()
        [8, 1, 1]
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    m = check_max_samples(max_samples)
    codes, c = check_labels(labels, None, "labels", min_classes=1)
    n = codes.shape[0]
    device = codes.device
    if m is None or n <= m:
        return torch.arange(n, device=device)
    if m < c:
        raise ValueError(
            f"`max_samples`={m} is smaller than the {c} classes present, so a subset cannot keep every class; "
            f"pass max_samples ≥ {c} (or None to use every sample)."
        )
    codes = codes.cpu()
    counts = torch.bincount(codes, minlength=c)
    alloc = torch.tensor(_allocate(counts.tolist(), m))  # (C,)
    gen = torch.Generator().manual_seed(int(seed))
    shuffled = torch.randperm(n, generator=gen)  # a random order of all samples...
    order = shuffled[torch.sort(codes[shuffled], stable=True).indices]  # ...grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
    rank = torch.arange(n) - starts[codes[order]]  # position of each sample within its class
    keep = order[rank < alloc[codes[order]]]
    return keep.sort().values.to(device)
