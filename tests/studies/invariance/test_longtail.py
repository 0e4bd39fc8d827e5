"""Long-tailed MNIST: Zipf counts, the sampler's subset, transformed images, fixed eval pairs."""

import pytest
import torch

from tguide.studies.invariance.longtail import LongTailMNISTDataModule, longtail_indices, size_buckets, zipf_counts
from tguide.data.mnist import load_mnist_test, split_indices
from tguide.errors import TGuideError


def test_zipf_counts_follow_the_law():
    counts = zipf_counts(10, 500, 5)
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    # Zipf: n_k ∝ k^-s with s = log(100)/log(10) = 2, so n_k ≈ 500 / k²
    for k, n in enumerate(counts, start=1):
        assert n == round(500 / k ** 2)
    with pytest.raises(TGuideError):
        zipf_counts(10, 5, 500)


def test_longtail_indices_take_exact_counts_seeded():
    labels = torch.arange(4).repeat_interleave(20)
    want = {0: 20, 1: 7, 2: 3, 3: 1}
    idx = longtail_indices(labels, want, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx], minlength=4).tolist() == [20, 7, 3, 1]
    again = longtail_indices(labels, want, torch.Generator().manual_seed(0))
    other = longtail_indices(labels, want, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    with pytest.raises(TGuideError, match="lower data.n_max"):
        longtail_indices(labels, {0: 21}, torch.Generator())


def test_buckets():
    b = size_buckets([500, 125, 56, 31, 20, 14, 10, 8, 6, 5])
    assert b == {"head": [0, 1, 2], "mid": [3, 4, 5], "tail": [6, 7, 8, 9]}


def test_datamodule_real_data(data_root):
    dm = LongTailMNISTDataModule(root=str(data_root), transform="rotation", seed=3)
    dm.setup()
    counts = dm.class_counts
    assert sorted(counts.tolist(), reverse=True) == zipf_counts(10, 500, 5)
    x, y = dm.train_set.tensors
    assert x.shape == (775, 1, 28, 28) and torch.equal(torch.bincount(y, minlength=10), counts)
    # training images come only from the deterministic train part (MNIST here is the 10k test set)
    _, labels = load_mnist_test(str(data_root))
    train, _, test = split_indices(labels, (8, 1, 1))
    assert set(dm.train_indices.tolist()) <= set(train.tolist())
    assert torch.equal(labels[dm.train_indices], y)
    assert dm.train_params.shape == (775,) and float(dm.train_params.abs().max()) <= 90
    # eval pairs: same digit, two different nuisance draws; same for every run seed
    xa, xb, yt = dm._pairs["test"].tensors
    assert torch.equal(yt, labels[test]) and not torch.allclose(xa, xb)
    other = LongTailMNISTDataModule(root=str(data_root), transform="rotation", seed=4)
    other.setup()
    torch.testing.assert_close(other._pairs["test"].tensors[0], xa)
    assert not torch.equal(other.class_counts, counts)  # class order is drawn per seed
    batch = next(iter(dm.invariance_dataloader("val")))
    assert len(batch) == 3 and batch[0].shape[1:] == (1, 28, 28)


def test_class_balanced_sampler_balances(data_root):
    dm = LongTailMNISTDataModule(root=str(data_root), transform="background", seed=0, batch_size=256)
    seen = torch.cat([y for _, y in dm.train_dataloader()])
    freq = torch.bincount(seen, minlength=10).float() / seen.numel()
    assert float(freq.min()) > 0.05 and float(freq.max()) < 0.16  # 0.1 each, up to noise (775 draws)
    dm2 = LongTailMNISTDataModule(root=str(data_root), transform="background", seed=0, sampler="instance")
    seen2 = torch.cat([y for _, y in dm2.train_dataloader()])
    assert torch.equal(torch.bincount(seen2, minlength=10), dm2.class_counts)


def test_bad_config(data_root):
    with pytest.raises(ValueError, match="unknown nuisance family"):
        LongTailMNISTDataModule(root=str(data_root), transform="shear")
    with pytest.raises(TGuideError, match="sampler"):
        LongTailMNISTDataModule(root=str(data_root), sampler="oversample")
