import pytest
import torch

from tguide.data.cifar10 import CLASSES, load_cifar10
from tguide.errors import DataNotFoundError


def test_offline_cifar10_counts_shapes_and_order(data_root):
    x, y, names = load_cifar10(data_root)
    assert x.shape == (3000, 3, 32, 32) and x.dtype == torch.uint8
    assert names == CLASSES and torch.equal(torch.bincount(y), torch.full((10,), 300))
    assert torch.equal(y, torch.arange(10).repeat_interleave(300))  # ordered by class, then file
    assert 0 <= int(x.min()) and int(x.max()) <= 255 and float(x.float().std()) > 30  # real images


def test_missing_split_or_root_is_a_clear_error(tmp_path, data_root):
    with pytest.raises(DataNotFoundError, match="only 'test'"):
        load_cifar10(data_root, split="train")
    with pytest.raises(DataNotFoundError, match="cifar10"):
        load_cifar10(tmp_path)
