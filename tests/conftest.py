"""Shared fixtures: the data root (``../shared/data`` beside the repo unless TGUIDE_DATA is set)."""

from __future__ import annotations

import os
import sys
from typing import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_MODELS = REPO.parent / "shared" / "models"


def _data_root() -> Path:
    env = os.environ.get("TGUIDE_DATA")
    return Path(env).resolve() if env else SHARED_DATA


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "mnist").is_dir():
        pytest.fail(f"real data not found at {root}; set TGUIDE_DATA to the shared data folder")
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread per test: on a shared 2-core machine torch's spinning worker threads
    slow small problems down by up to 30x, and the suite's timings should not depend on load."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test sees TGUIDE_DATA and writes W&B files only offline and under its tmp_path.

    A W&B run left open by one test would be reused by the next test's ``WandbLogger``
    (Lightning reuses ``wandb.run``), which then logs into the wrong folder: close it before
    and after every test. An in-process W&B run also leaves ``WANDB_SERVICE`` in this process's
    environment; a child ``tguide.fit`` inheriting it would register its run in this process's
    W&B service, where a killed child's run id stays "in use": each test starts without it.
    """
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.setenv("TGUIDE_DATA", str(_data_root()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _finish_wandb()
    yield
    _finish_wandb()


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture(scope="session")
def models_root() -> Path:
    """``$TGUIDE_MODELS`` if set, else ``shared/models`` beside the repository."""
    env = os.environ.get("TGUIDE_MODELS")
    root = Path(env).resolve() if env else SHARED_MODELS
    if not (root / "README.md").is_file():
        pytest.fail(f"pretrained models not found at {root}; set TGUIDE_MODELS to the shared models folder")
    return root

