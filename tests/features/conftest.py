"""Fixtures of the feature-capture tests: a LeNet-5 and a small labelled loader."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tguide.nets.lenet import LeNet5


@pytest.fixture
def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5()


@pytest.fixture
def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 1, 28, 28, generator=g)
    y = torch.randint(0, 4, (23,), generator=g) * 3 + 5  # labels {5, 8, 11, 14}
    return DataLoader(TensorDataset(x, y), batch_size=8)
