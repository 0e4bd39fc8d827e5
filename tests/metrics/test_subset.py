"""``max_samples``: one seeded, class-stratified random subset everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tguide.metrics._subset import stratified_subset
from tguide.metrics.functional.otce import otce


def test_keeps_every_class_of_class_sorted_labels():
    # sorted by class with a long tail: a plain prefix or a uniform draw would lose classes
    sizes = [500, 200, 100, 50, 20, 5, 2, 1]
    y = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    for m in (8, 9, 30, 100, 877):
        idx = stratified_subset(y, m, seed=0)
        assert idx.shape == (m,) and idx.dtype == torch.int64
        assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == m
        counts = torch.bincount(y[idx], minlength=len(sizes))
        assert bool((counts >= 1).all()), counts
        assert bool((counts <= torch.tensor(sizes)).all())
    counts = torch.bincount(y[stratified_subset(y, 100, seed=0)]).tolist()
    assert counts[0] > counts[1] > counts[2] > counts[3]  # proportional beyond the one per class
    assert abs(counts[0] - 100 * 500 / 878) <= 2


def test_proportional_shares_and_exact_size():
    y = torch.tensor([0] * 90 + [1] * 9 + [2])
    assert torch.bincount(y[stratified_subset(y, 10, seed=3)]).tolist() == [8, 1, 1]
    y = torch.arange(1000) // 100
    assert torch.bincount(y[stratified_subset(y, 500, seed=1)]).tolist() == [50] * 10


def test_seeded_and_any_label_set():
    rng = np.random.default_rng(0)
    y = rng.choice([-7, 3, 1000], size=300)
    a, b, c = (stratified_subset(y, 40, seed=s) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(y[a.numpy()]) == {-7, 3, 1000}
    g = torch.get_rng_state()
    stratified_subset(y, 40, seed=5)
    assert torch.equal(g, torch.get_rng_state())  # the global RNG is untouched


def test_small_inputs_and_errors():
    y = torch.tensor([0, 0, 1, 1, 2])
    assert torch.equal(stratified_subset(y, None), torch.arange(5))
    assert torch.equal(stratified_subset(y, 5), torch.arange(5))
    assert torch.equal(stratified_subset(y, 50), torch.arange(5))
    with pytest.raises(ValueError, match="smaller than the 3 classes"):
        stratified_subset(y, 2)
    with pytest.raises(ValueError, match="`max_samples` must be an integer"):
        stratified_subset(y, 0)
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        stratified_subset(y, 3, seed=1.5)


def test_otce_max_samples_is_stratified():
    # class-sorted sides with a rare class: every class must survive the cap on both sides
    g = torch.Generator().manual_seed(0)
    ys = torch.repeat_interleave(torch.arange(4), torch.tensor([60, 30, 8, 2]))
    yt = torch.repeat_interleave(torch.arange(3), torch.tensor([70, 25, 1]))
    xs = torch.randn(100, 3, generator=g, dtype=torch.float64) + ys[:, None]
    xt = torch.randn(96, 3, generator=g, dtype=torch.float64) + yt[:, None]
    r = otce(xs, ys, xt, yt, max_samples=12, seed=2)
    assert r.coupling.shape == (12, 12)
    ref_s, ref_t = stratified_subset(ys, 12, seed=2), stratified_subset(yt, 12, seed=3)
    assert len(set(ys[ref_s].tolist())) == 4 and len(set(yt[ref_t].tolist())) == 3
    same = otce(xs[ref_s], ys[ref_s], xt[ref_t], yt[ref_t])
    assert torch.equal(r.coupling, same.coupling) and float(r.score) == float(same.score)
    with pytest.raises(ValueError, match="smaller than the 4 classes"):
        otce(xs, ys, xt, yt, max_samples=3)
