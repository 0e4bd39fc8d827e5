"""MNIST-M loader on the shared offline copy (3,000 PNGs, labels of the files present)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tguide.data.mnist_m import load_mnist_m, mnist_indices_disjoint_from, read_label_file
from tguide.errors import DataNotFoundError, TGuideError


def test_load_real(data_root: Path) -> None:
    x, y, index = load_mnist_m(data_root)
    files = sorted((data_root / "domains/mnist_m/mnist_m_test").glob("*.png"))
    assert x.shape == (len(files), 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == index.shape == (len(files),)
    assert index.tolist() == [int(f.stem) for f in files]
    # labels agree with the label file read line by line (independently of the loader)
    lines = (data_root / "domains/mnist_m/mnist_m_test_labels.txt").read_text().split("\n")
    table = dict(line.split() for line in lines if line.strip())
    assert y.tolist() == [int(table[f.name]) for f in files]
    assert set(y.tolist()) == set(range(10))
    assert x.float().std() > 10  # real colour images, not blank


def test_disjoint_indices() -> None:
    keep = mnist_indices_disjoint_from(torch.arange(3000), n_mnist=10_000)
    assert keep.numel() == 7000 and int(keep.min()) == 3000


def test_label_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "labels.txt"
    bad.write_text("00000000.png 7\n00000001.png seven\n")
    with pytest.raises(TGuideError, match="line 2"):
        read_label_file(bad)
    with pytest.raises(DataNotFoundError):
        load_mnist_m(tmp_path)
