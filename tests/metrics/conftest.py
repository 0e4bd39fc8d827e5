"""Shared fixtures of the metric tests: seeded data with a class signal, rotations, renamings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _classification(
    rng: np.random.Generator, n: int, d: int, c: int, signal: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` Gaussian features around class centres and ``(N,)`` labels, every class present."""
    labels = rng.permutation(np.arange(n) % c)
    centres = signal * rng.normal(size=(c, d))
    return centres[labels] + rng.normal(size=(n, d)), labels


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A random ``(D, D)`` orthogonal matrix."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _rename(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """The same partition under new, arbitrary (negative, large, unsorted) integer names."""
    classes = np.unique(labels)
    names = rng.choice(np.arange(-10_000, 10_000), size=classes.size, replace=False)
    return names[np.searchsorted(classes, labels)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


@pytest.fixture
def make_data() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return _classification


@pytest.fixture
def rotation() -> Callable[[np.random.Generator, int], np.ndarray]:
    return _rotation


@pytest.fixture
def rename() -> Callable[[np.random.Generator, np.ndarray], np.ndarray]:
    return _rename
