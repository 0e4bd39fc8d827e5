"""Shared fixtures for the ranking tests: small CIFAR-10 image folders copied from the shared data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def make_cifar_folder(tmp_path_factory, data_root: Path) -> Callable[[int], Path]:
    """``make(k)``: a class-sorted CIFAR-10 image folder with the first ``k`` JPEGs of each class."""

    def make(per_class: int) -> Path:
        src = data_root / "cifar10" / "test"
        dst = tmp_path_factory.mktemp("cifar") / f"cifar{per_class}"
        for cls in sorted(p.name for p in src.iterdir()):
            (dst / cls).mkdir(parents=True)
            for f in sorted((src / cls).glob("*.jpg"))[:per_class]:
                shutil.copy(f, dst / cls / f.name)
        return dst

    return make
