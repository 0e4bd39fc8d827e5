"""Experiment loggers: W&B (offline unless an account is configured), CSV, or none."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger

__all__ = ["wandb_mode", "make_wandb_logger", "make_csv_logger"]


def _netrc_has_wandb() -> bool:
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set; ``"online"`` when ``$WANDB_API_KEY`` or a ``wandb login`` netrc entry
    exists; otherwise ``"offline"`` (runs are written locally and can be uploaded with ``wandb sync``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb():
        return "online"
    return "offline"


def make_wandb_logger(
    save_dir: str,
    project: str = "tguide",
    name: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A :class:`~lightning.pytorch.loggers.WandbLogger` writing under ``save_dir/wandb``.

    ``mode`` (``online``/``offline``/``disabled``) defaults to :func:`wandb_mode`.
    """
    mode = mode or wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        save_dir=save_dir, project=project, name=name, entity=entity, tags=list(tags or []),
        offline=mode == "offline", mode=mode, log_model=False, **kwargs,
    )


def make_csv_logger(save_dir: str, name: str = "csv") -> CSVLogger:
    """A CSV logger writing ``save_dir/<name>/metrics.csv`` and ``hparams.yaml``."""
    return CSVLogger(save_dir=save_dir, name=name, version="")
