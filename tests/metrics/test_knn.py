"""Leave-one-out kNN accuracy against numpy and sklearn, chunking, tie-break, properties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from tguide.metrics.functional.knn import knn_accuracy


def data(rng, n, d, c, signal=0.7):
    y = rng.permutation(np.arange(n) % c)
    return signal * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d)), y


def np_knn(f, y, k, metric):
    """Full distance matrix, stable sort, vote, tie to the tied class met first among the neighbours."""
    n = len(y)
    if metric == "cosine":
        g = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        dist = 1 - g @ g.T
    else:
        dist = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    k = min(k, n - 1)
    hits = 0
    for i in range(n):
        nb = np.argsort(dist[i], kind="stable")[:k]
        votes = {}
        for lab in y[nb]:
            votes[lab] = votes.get(lab, 0) + 1
        best = max(votes.values())
        pred = next(lab for lab in y[nb] if votes[lab] == best)
        hits += pred == y[i]
    return hits / n


@pytest.mark.parametrize("n,d,c", [(200, 10, 4), (60, 100, 3), (150, 4, 6)])  # D > N included
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_matches_numpy(rng, n, d, c, metric, k):
    f, y = data(rng, n, d, c)
    got = knn_accuracy(torch.from_numpy(f), torch.from_numpy(y), k=k, metric=metric)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(np_knn(f, y, k, metric), abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_sklearn_leave_one_out(rng, metric):
    """Two classes and odd k: no ties, so sklearn's vote is ours; self excluded by hand."""
    f, y = data(rng, 180, 6, 2)
    knn = KNeighborsClassifier(n_neighbors=8, metric=metric, algorithm="brute").fit(f, y)
    idx = knn.kneighbors(f, n_neighbors=8, return_distance=False)
    pred = []
    for i in range(len(y)):
        nb = [j for j in idx[i] if j != i][:7]
        pred.append(np.bincount(y[nb], minlength=2).argmax())
    assert float(knn_accuracy(f, y, k=7, metric=metric)) == pytest.approx(np.mean(np.array(pred) == y), abs=1e-12)


def test_chunking_does_not_change_the_result(rng):
    f, y = data(rng, 103, 5, 4)
    full = float(knn_accuracy(f, y, chunk_size=1000))
    for chunk in (1, 7, 50):
        assert float(knn_accuracy(f, y, chunk_size=chunk)) == full


def test_tie_break_by_distance():
    # query 0 at the origin; neighbours: class 5 at distance 1 and 4, class 7 at 2 and 3
    f = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0], [100.0], [101.0]])
    y = np.array([5, 5, 7, 7, 5, 9, 9])
    # k = 4 for sample 0: votes 5:2 (1, -4), 7:2 (-2, 3) -> tie -> class 5 (nearest at 1)
    acc = knn_accuracy(f, y, k=4, metric="euclidean")
    assert float(acc) == pytest.approx(np_knn(f, y, 4, "euclidean"), abs=1e-12)
    f2 = f.copy()
    f2[1, 0], f2[2, 0] = 2.0, -1.0  # now class 7 has the nearest neighbour
    got = knn_accuracy(f2, y, k=4, metric="euclidean")
    assert float(got) == pytest.approx(np_knn(f2, y, 4, "euclidean"), abs=1e-12)
    assert np_knn(f, y, 4, "euclidean") != np_knn(f2, y, 4, "euclidean")


# ---------------------------------------------------------------- properties
def test_invariances(rng, rotation, rename):
    f, y = data(rng, 200, 6, 4)
    perm = rng.permutation(len(y))
    q = rotation(rng, 6)
    for metric in ("cosine", "euclidean"):
        base = float(knn_accuracy(f, y, metric=metric))
        assert float(knn_accuracy(f, rename(rng, y), metric=metric)) == base
        assert float(knn_accuracy(f[perm], y[perm], metric=metric)) == base
        assert float(knn_accuracy(f @ q, y, metric=metric)) == base
        assert float(knn_accuracy(2.5 * f, y, metric=metric)) == base
    assert float(knn_accuracy(f + 10.0, y, metric="euclidean")) == float(knn_accuracy(f, y, metric="euclidean"))


def test_monotone_in_separation(rng):
    noise = rng.normal(size=(300, 6))
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 6))
    s = [float(knn_accuracy(noise + a * centres[y], y, metric="euclidean")) for a in (0.0, 1.0, 3.0, 8.0)]
    assert s == sorted(s) and s[-1] == 1.0 and s[0] < 0.5


def test_k_capped_at_n_minus_one():
    f = np.array([[0.0], [0.1], [5.0], [5.1]])
    y = np.array([0, 0, 1, 1])
    # k = 3 = N-1: each sample sees 1 of its class and 2 of the other
    assert float(knn_accuracy(f, y, k=100, metric="euclidean")) == 0.0
    assert float(knn_accuracy(f, y, k=1, metric="euclidean")) == 1.0


# ---------------------------------------------------------------- errors
def test_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    bad = f.copy()
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match="features.*NaN/Inf"):
        knn_accuracy(bad, y)
    with pytest.raises(ValueError, match="labels.*1 distinct class"):
        knn_accuracy(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="labels.*19 entries"):
        knn_accuracy(f, y[:19])
    with pytest.raises(ValueError, match="`k`"):
        knn_accuracy(f, y, k=0)
    with pytest.raises(ValueError, match="metric"):
        knn_accuracy(f, y, metric="manhattan")
    with pytest.raises(ValueError, match="chunk_size"):
        knn_accuracy(f, y, chunk_size=0)
