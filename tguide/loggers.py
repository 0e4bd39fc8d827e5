"""Experiment loggers: W&B (offline unless an account is configured), CSV, or none.

Both continue a resumed run (``resume=PATH``) in its folder: the W&B run keeps its id (stored
in ``<run>/wandb_id``), and the CSV file keeps the rows written up to the checkpoint being
resumed (:func:`keep_rows_before`) and appends.
"""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = [
    "wandb_mode",
    "make_wandb_logger",
    "make_csv_logger",
    "ResumableCSVLogger",
    "keep_rows_before",
    "WANDB_ID_FILE",
]

WANDB_ID_FILE = "wandb_id"


def _is_rank_zero() -> bool:
    return all(int(os.environ.get(k, "0")) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


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
    id: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A :class:`~lightning.pytorch.loggers.WandbLogger` writing under ``save_dir/wandb``.

    ``mode`` (``online``/``offline``/``disabled``) defaults to :func:`wandb_mode`. The run id is
    ``id``, else the one stored in ``save_dir/wandb_id`` (a resumed run: W&B continues it with
    ``resume="allow"``), else a new one, stored there (rank 0).
    """
    import secrets
    import string

    mode = mode or wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(save_dir) / WANDB_ID_FILE
    if id is None and id_file.is_file() and id_file.read_text().strip():
        id = id_file.read_text().strip()
        kwargs.setdefault("resume", "allow")
    if id is None:
        id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
    if _is_rank_zero() and not id_file.is_file():
        id_file.write_text(id + "\n")
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        entity=entity,
        tags=list(tags or []),
        offline=mode == "offline",
        mode=mode,
        log_model=False,
        id=id,
        **kwargs,
    )


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is kept (its first
    ``keep_rows`` rows, all when ``None``) and appended to, instead of deleted."""

    def __init__(self, log_dir: str, keep_rows: int | None) -> None:
        self._keep_rows = keep_rows
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        if self._keep_rows is not None:
            rows = rows[: self._keep_rows]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = fields


class ResumableCSVLogger(CSVLogger):
    """A :class:`~lightning.pytorch.loggers.CSVLogger` that can continue a run's ``metrics.csv``:
    set ``resume_rows`` (rows to keep, ``-1`` = all) before it writes anything."""

    resume_rows: int | None = None

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self.resume_rows is not None and _is_rank_zero():
            self._fs.makedirs(self.root_dir, exist_ok=True)
            keep = None if self.resume_rows < 0 else self.resume_rows
            self._experiment = _AppendingWriter(self.log_dir, keep)
        return super().experiment


def make_csv_logger(save_dir: str, name: str = "csv") -> ResumableCSVLogger:
    """A CSV logger writing ``save_dir/<name>/metrics.csv`` and ``hparams.yaml``."""
    return ResumableCSVLogger(save_dir=save_dir, name=name, version="")


def keep_rows_before(logger: ResumableCSVLogger, global_step: int) -> None:
    """Continue ``logger``'s metrics.csv from a checkpoint at ``global_step``: rows logged at a
    step >= ``global_step`` came after that checkpoint (the resumed run logs them again) and go."""
    path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
    keep = -1
    if path.is_file():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = 0
        for row in rows:
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                step = 0
            if step >= global_step:
                break
            keep += 1
    logger.resume_rows = keep
