import gzip
import struct

import numpy as np
import pytest
import torch

from tguide.data.mnist import MNISTDataModule, load_mnist_test, read_idx, split_indices
from tguide.errors import DataNotFoundError, TGuideError


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 2, 3, 4) + array.tobytes())
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x03\x04\x05")
    with pytest.raises(TGuideError, match="not an unsigned-byte idx"):
        read_idx(path)


def test_real_mnist_shapes_and_labels(data_root):
    images, labels = load_mnist_test(data_root)
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))
    # the official test set has 980 zeros and 1135 ones
    assert int((labels == 0).sum()) == 980 and int((labels == 1).sum()) == 1135


def test_split_is_deterministic_disjoint_and_stratified():
    labels = torch.tensor([0] * 25 + [1] * 13)
    train, val, test = split_indices(labels, (8, 1, 1))
    again = split_indices(labels, (8, 1, 1))
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    allidx = torch.cat([train, val, test])
    assert allidx.numel() == 38 and allidx.unique().numel() == 38
    # class 0: positions 0..24 -> val gets 8, 18; test gets 9, 19
    assert val.tolist()[:2] == [8, 18] and test.tolist()[:2] == [9, 19]
    assert int((labels[val] == 1).sum()) == 1 and int((labels[test] == 1).sum()) == 1


def test_datamodule_split_sizes_and_digits(data_root):
    dm = MNISTDataModule(root=str(data_root), digits=[7, 8, 9], batch_size=32)
    dm.setup()
    n = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    assert n == 1028 + 974 + 1009  # the test set's 7s, 8s and 9s
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert set(y.tolist()) <= {7, 8, 9}
    assert abs(float(dm.train_set.tensors[0].mean())) < 0.2  # standardised


def test_datamodule_missing_dataset_fails_fast(tmp_path):
    with pytest.raises(DataNotFoundError, match="mnist"):
        MNISTDataModule(root=str(tmp_path))


def test_random_affine_identity_and_jitter():
    from tguide.data.mnist import random_affine

    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    same = random_affine(x, 0.0, 0.0, 0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    moved = random_affine(x, 10.0, 0.08, 0.08)
    assert moved.shape == x.shape and not torch.allclose(moved, x)
