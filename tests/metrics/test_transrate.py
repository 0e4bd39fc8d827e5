"""TransRate against an independent numpy formula (slogdet on D×D), properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics.functional.transrate import coding_rate, transrate, transrate_layers

SHAPES = [  # (N, D, C)
    (200, 10, 4),
    (60, 100, 3),  # D > N: every logdet on the N×N / n_c×n_c Gram
    (300, 20, 100),  # C = 100, n_c = 3 < D
    (50, 50, 5),
    (120, 7, 2),
]


def np_rate(z: np.ndarray, eps: float) -> float:
    n, d = z.shape
    sign, logdet = np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))
    assert sign > 0
    return 0.5 * logdet


def np_transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    z = f - f.mean(axis=0)
    n = len(y)
    conditional = sum((y == k).sum() / n * np_rate(z[y == k], eps) for k in np.unique(y))
    return np_rate(z, eps) - conditional


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("eps", [1e-4, 1.0])
@pytest.mark.parametrize("n,d,c", SHAPES)
def test_matches_numpy(rng, make_data, n, d, c, eps):
    f, y = make_data(rng, n, d, c, signal=0.5)
    got = transrate(torch.from_numpy(f), torch.from_numpy(y), eps=eps)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert rel_err(float(got), np_transrate(f, y, eps)) <= 1e-6


def test_mixed_class_sizes(rng):
    """Some classes above D (D×D Gram), some below (n_c×n_c Gram), N > D overall."""
    d = 30
    sizes = [200, 150, 40, 10, 3]
    y = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    f = rng.normal(size=(len(y), d)) + 0.7 * rng.normal(size=(len(sizes), d))[y]
    assert rel_err(float(transrate(f, y)), np_transrate(f, y)) <= 1e-6


@pytest.mark.parametrize("n,d", [(40, 6), (6, 40)])
def test_coding_rate_matches_numpy(rng, n, d):
    z = rng.normal(size=(n, d))
    assert rel_err(float(coding_rate(torch.from_numpy(z), 0.01)), np_rate(z, 0.01)) <= 1e-10


@pytest.mark.parametrize("n,d,c", [(100, 8, 3), (30, 50, 4)])
def test_nonnegative_and_signal(rng, make_data, n, d, c):
    """log det is concave, so R(Z) ≥ Σ (n_c/n) R(Z_c): TransRate ≥ 0; more signal scores higher."""
    _, y = make_data(rng, n, d, c)
    noise = rng.normal(size=(n, d))
    centres = rng.normal(size=(c, d))
    weak, strong = float(transrate(noise + 0.1 * centres[y], y)), float(transrate(noise + 3 * centres[y], y))
    assert weak >= -1e-9
    assert strong > weak


def test_shared_direction_scores_zero():
    """Classes separated only along one shared direction (not re-centred): TransRate = 0."""
    y = np.repeat([0, 1], 10)
    f = np.repeat(np.array([[1.0, 0.0], [-1.0, 0.0]]), 10, axis=0)
    assert abs(float(transrate(f, y))) <= 1e-9


@pytest.mark.parametrize("n,d,c", [(150, 12, 5), (40, 60, 4)])
def test_invariances(rng, make_data, rotation, rename, n, d, c):
    f, y = make_data(rng, n, d, c, signal=0.5)
    base = float(transrate(f, y))
    perm = rng.permutation(n)
    assert float(transrate(f, rename(rng, y))) == pytest.approx(base, rel=1e-10)
    assert float(transrate(f[perm], y[perm])) == pytest.approx(base, rel=1e-10)
    assert float(transrate(f @ rotation(rng, d), y)) == pytest.approx(base, rel=1e-8)
    assert float(transrate(f - 100.0, y)) == pytest.approx(base, rel=1e-8)


def test_layers_ranked_best_first(rng):
    n, c = 90, 3
    y = rng.permutation(np.arange(n) % c)
    layers = {
        "noise": rng.normal(size=(n, 5)),
        "onehot": np.eye(c)[y] + 0.05 * rng.normal(size=(n, c)),
        "mixed": rng.normal(size=(n, 4)) + np.eye(c)[y] @ rng.normal(size=(c, 4)),
    }
    scores = transrate_layers(layers, y, eps=1e-2)
    assert set(scores) == set(layers)
    values = list(scores.values())
    assert values == sorted(values, reverse=True)
    assert next(iter(scores)) == "onehot" and list(scores)[-1] == "noise"
    for name, feats in layers.items():
        assert scores[name] == pytest.approx(np_transrate(feats, y, 1e-2), rel=1e-6)


def test_layers_errors(rng):
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match=r"non-empty mapping"):
        transrate_layers({}, y)
    with pytest.raises(ValueError, match=r"non-empty mapping"):
        transrate_layers([rng.normal(size=(10, 2))], y)
    with pytest.raises(ValueError, match=r"layer 'conv1': `features` must be 2-D"):
        transrate_layers({"fc": rng.normal(size=(10, 2)), "conv1": rng.normal(size=(10, 2, 3, 3))}, y)


def test_errors(rng):
    f = rng.normal(size=(12, 3))
    y = np.arange(12) % 3
    bad = f.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`features` contains 1 NaN/Inf"):
        transrate(bad, y)
    with pytest.raises(ValueError, match=r"`features` must be 2-D"):
        transrate(f[:, 0], y)
    with pytest.raises(ValueError, match=r"`labels` has 13 entries but the features have 12 rows"):
        transrate(f, np.arange(13) % 3)
    with pytest.raises(ValueError, match=r"`labels` has 1 distinct class"):
        transrate(f, np.full(12, 4))
    with pytest.raises(ValueError, match=r"`features` is empty"):
        transrate(np.zeros((12, 0)), y)
    for eps in (0.0, -1e-3, float("nan"), float("inf"), "1e-4", None):
        with pytest.raises(ValueError, match=r"`eps` must be a positive finite float"):
            transrate(f, y, eps=eps)
