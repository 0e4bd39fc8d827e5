"""Run folders: where a run writes, and how ``resume=PATH`` continues one.

:func:`start_run` is the start of every run (``tguide.fit`` and the recipe runners): it decides
the run folder (the old one when ``cfg.resume`` is set), checks that a resumed config differs
from the stored one only in :data:`RESUMABLE_KEYS`, and writes ``config.yaml``, whose
``resumed:`` list records every resumption (when, and which keys changed from what to what).
:func:`restore_config` makes the config of ``python -m tguide.fit resume=RUN [key=value ...]``:
the stored one, with the command line's resumable changes on top. :func:`did_work` tells a
run that failed before doing anything (its folder is removed) from one that failed later.
:func:`prepare_run` is the preamble of a recipe runner (``runner: {_target_: ..., _partial_: true}``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tguide.errors import ResumeError, TGuideError

__all__ = [
    "RESUMABLE_KEYS",
    "ResumePoint",
    "ResumeState",
    "find_resume",
    "check_resumable",
    "config_dict",
    "start_run",
    "prepare_run",
    "restore_config",
    "did_work",
    "HISTORY_KEY",
]

# The one allow-list: keys that may differ between a run and its resumption (a key covers its
# sub-keys). Everything else must match the stored config.yaml, or resuming is refused.
RESUMABLE_KEYS: tuple[str, ...] = (
    "resume",
    "paths",
    "logger",
    "threads",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "checkpoint_every_n_steps",
)

CONFIG_FILE = "config.yaml"
EPOCH_CKPT = "last-epoch.ckpt"
# config.yaml's record of the run's resumptions: [{at, changed: {key: {was, now}}}, ...]; not a setting
HISTORY_KEY = "resumed"
# what a run writes before it does any work: a folder holding only these is removed when the run fails
_BOOKKEEPING = (".hydra/", "fit.log", CONFIG_FILE, "wandb_id", "wandb/", "csv/hparams.yaml")


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its folder and (for ``tguide.fit``) the checkpoint to load."""

    run_dir: Path
    checkpoint: Path | None


def _is_rank_zero() -> bool:
    return all(int(os.environ.get(k, "0")) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def find_resume(path: str | os.PathLike) -> ResumePoint:
    """The run folder and newest ``last*.ckpt`` of ``path`` (a run folder or a checkpoint file).

    A checkpoint file's run folder is the nearest folder above it holding ``config.yaml``.
    Raises :class:`~tguide.errors.ResumeError` when ``path`` does not exist or holds no run.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ResumeError(
            f"resume={path}: no such file or folder; pass a run folder (outputs/<recipe>/<time>) or a .ckpt file"
        )
    if p.is_file():
        for folder in (p.parent, *p.parent.parents[:2]):
            if (folder / CONFIG_FILE).is_file():
                return ResumePoint(folder.resolve(), p.resolve())
        raise ResumeError(
            f"resume={path}: found no {CONFIG_FILE} in the folders above the checkpoint; pass the run folder instead"
        )
    if not (p / CONFIG_FILE).is_file():
        raise ResumeError(f"resume={path}: not a run folder (no {CONFIG_FILE} in it)")
    candidates = [c for c in p.rglob("last*.ckpt") if "wandb" not in c.parts]
    # last-epoch.ckpt (epoch boundaries) and last-step.ckpt (checkpoint_every_n_steps) are written by
    # ResumeState after everything of their step was logged; Lightning's last.ckpt (at validation end,
    # before the epoch's end hooks) is the fallback
    preferred = [c for c in candidates if c.name in (EPOCH_CKPT, "last-step.ckpt")] or candidates
    newest = max(preferred, key=lambda c: c.stat().st_mtime, default=None)
    return ResumePoint(p.resolve(), newest.resolve() if newest is not None else None)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _allowed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in (*RESUMABLE_KEYS, HISTORY_KEY))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"was": old value, "now": new value}}`` of the flattened keys that differ (the
    record itself and ``paths`` aside)."""
    a = _flatten({k: v for k, v in old.items() if k != HISTORY_KEY})
    b = _flatten({k: v for k, v in new.items() if k != HISTORY_KEY})
    return {
        k: {"was": a.get(k), "now": b.get(k)}
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>") and not k.startswith("paths.")
    }


def config_dict(cfg: Any, *, resolve: bool, what: str) -> dict[Any, Any]:
    """``cfg`` (an OmegaConf node) as a plain dict; :class:`~tguide.errors.TGuideError` naming
    ``what`` when it is not a mapping (a YAML list or scalar where a config was expected)."""
    from omegaconf import OmegaConf

    value = OmegaConf.to_container(cfg, resolve=resolve)
    if not isinstance(value, dict):
        raise TGuideError(f"{what} must be a mapping of keys to values, got a {type(value).__name__}")
    return value


def restore_config(point: ResumePoint, changes: dict[str, Any], resume: str) -> Any:
    """The config a resumed run continues with: the stored ``config.yaml`` as the base, each
    ``changes`` item (``{dotted key: value}``, values may interpolate the stored keys) put on top.

    Raises :class:`~tguide.errors.ResumeError` when a change touches a key outside
    :data:`RESUMABLE_KEYS` (restating a stored value is no change).
    """
    from omegaconf import OmegaConf

    stored = config_dict(
        OmegaConf.load(point.run_dir / CONFIG_FILE), resolve=False, what=str(point.run_dir / CONFIG_FILE)
    )
    cfg = OmegaConf.create(stored)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    OmegaConf.update(cfg, "resume", resume, merge=False, force_add=True)
    if OmegaConf.select(cfg, "paths.run_dir") is None:  # a config.yaml written by hand
        OmegaConf.update(cfg, "paths.run_dir", str(point.run_dir), merge=False, force_add=True)
    check_resumable(cfg, stored, where=str(point.run_dir))
    return cfg


def did_work(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds anything beyond what every run writes at its start (the config,
    the log, the logger's run header): a checkpoint, a metrics row, a result file."""
    root = Path(run_dir)
    if not root.is_dir():
        return False
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if not any(rel == b or (b.endswith("/") and rel.startswith(b)) for b in _BOOKKEEPING):
                return True
    return False


def check_resumable(cfg: Any, stored: dict[str, Any], where: str = "the run") -> None:
    """Raise :class:`~tguide.errors.ResumeError` (one line) if ``cfg`` differs from the ``stored``
    resolved config in a key outside :data:`RESUMABLE_KEYS`.

    Interpolations follow the stored values of the allowed keys (a scheduler's
    ``T_max: ${trainer.max_epochs}`` is not a change of its own).
    """
    from omegaconf import OmegaConf

    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(new, False)
    for key in RESUMABLE_KEYS:
        old = OmegaConf.select(OmegaConf.create(stored), key, default="__absent__")
        if old == "__absent__":  # an allowed key the old run did not have: the new value stands
            continue
        OmegaConf.update(
            new, key, OmegaConf.to_container(old) if OmegaConf.is_config(old) else old, merge=False, force_add=True
        )
    a = _flatten(stored)
    b = _flatten(OmegaConf.to_container(new, resolve=True))
    changed = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>") and not _allowed(k))
    if changed:
        first = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:4])})" if len(changed) > 1 else ""
        raise ResumeError(
            f"cannot resume {where}: {first} was {a.get(first, '<absent>')!r}, now {b.get(first, '<absent>')!r}"
            f"{more}; only {', '.join(RESUMABLE_KEYS)} may change when resuming (start a new run otherwise)"
        )


def start_run(cfg: Any) -> tuple[Path, ResumePoint | None]:
    """Decide the run folder of ``cfg`` and write its ``config.yaml``; ``(run folder, resume point)``.

    With ``cfg.resume`` set, ``cfg.paths.run_dir`` becomes the resumed run's folder (every
    ``${paths.run_dir}`` interpolation follows) and the config is checked against the stored one.
    """
    from omegaconf import OmegaConf, open_dict

    if cfg.get("ckpt_path") is not None:
        raise TGuideError(
            "ckpt_path is not a tguide.fit key; to continue a run use resume=PATH (its run folder or a .ckpt file)"
        )
    point = None
    record: dict[str, Any] = {}
    if cfg.get("resume"):
        point = find_resume(str(cfg.resume))
        stored = config_dict(
            OmegaConf.load(point.run_dir / CONFIG_FILE), resolve=False, what=str(point.run_dir / CONFIG_FILE)
        )
        old_dir = (stored.get("paths") or {}).get("run_dir")
        run_dir = old_dir if old_dir and Path(old_dir).resolve() == point.run_dir else str(point.run_dir)
        with open_dict(cfg):
            cfg.paths.run_dir = run_dir
        check_resumable(cfg, stored, where=str(point.run_dir))
        history = list(stored.get(HISTORY_KEY) or [])
        new = config_dict(cfg, resolve=True, what="the config")
        history.append({"at": datetime.now().isoformat(timespec="seconds"), "changed": _changes(stored, new)})
        record = {HISTORY_KEY: history}
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        resolved = config_dict(cfg, resolve=True, what="the config")
        resolved.update(record)  # every resumption recorded, none overwritten
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(resolved))
    return run_dir, point


def prepare_run(cfg: Any, block: str, recipes: str) -> tuple[dict[str, Any], Path]:
    """Return ``(cfg.<block> as a resolved dict, run folder)``; the folder is created and the
    composed config written to ``<run folder>/config.yaml`` (:func:`start_run`, so ``resume=``
    continues in the old folder).

    Raises :class:`~tguide.errors.TGuideError` naming ``recipes`` when the config has no ``block``.
    """

    if cfg.get(block) is None:
        raise TGuideError(f"the config has no `{block}:` block; use {recipes}")
    run_dir, _ = start_run(cfg)
    values = config_dict(cfg[block], resolve=True, what=f"the config's `{block}:` block")
    return values, run_dir


def _resume_state_class() -> type:
    import random

    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback

    class _ResumeState(Callback):
        """What Lightning's checkpoints leave out for an exact resumption.

        - every checkpoint carries the RNG states (torch, CUDA, numpy, random) and restores them,
          so a run resumed at an epoch boundary draws the same shuffles and augmentations as an
          uninterrupted one;
        - at every epoch boundary (the start of the next epoch, after the previous epoch's end
          hooks, LR-scheduler step and logging) and at the end of training it writes
          ``<checkpoints>/last-epoch.ckpt`` atomically, then flushes the loggers; ``resume=`` prefers
          it to Lightning's ``last.ckpt``, which is saved at validation end, before the epoch's
          end hooks (a run resumed from that skips them, and their logs).
        """

        def __init__(self, dirpath: str | os.PathLike) -> None:
            self.dirpath = Path(dirpath)
            self._saved_step = -1
            self._in_boundary = False

        @property
        def state_key(self) -> str:
            return "tguide.ResumeState"

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            # plain types and tensors only: Lightning loads checkpoints with weights_only=True
            state = np.random.get_state(legacy=True)
            # the global RandomState is an MT19937, whose legacy state is the 5-tuple
            assert isinstance(state, tuple), f"unexpected numpy RNG state {type(state).__name__}"
            kind, keys, pos, has_gauss, gauss = state
            rng = {
                "torch": torch.get_rng_state(),
                "random": random.getstate(),
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            }
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            checkpoint.setdefault("tguide", {})["rng"] = rng
            if self._in_boundary:
                # saved at the next epoch's start, whose `ready` count Lightning has raised already:
                # record the state as "epoch finished", which Lightning resumes with a fresh epoch
                progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress")
                if progress:
                    for part in ("total", "current"):
                        progress[part]["ready"] = progress[part]["started"] = progress[part]["completed"]

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            rng = (checkpoint.get("tguide") or {}).get("rng")
            self._saved_step = int(checkpoint.get("global_step", -1))
            if not rng:
                return
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["random"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

        def _boundary(self, trainer: Any) -> None:
            if trainer.sanity_checking or trainer.global_step == self._saved_step or trainer.global_step == 0:
                return
            self._saved_step = trainer.global_step
            path = self.dirpath / EPOCH_CKPT
            tmp = path.with_name(f".{EPOCH_CKPT}.tmp")
            self._in_boundary = True
            try:
                trainer.save_checkpoint(str(tmp))  # every rank takes part; rank 0 writes
            finally:
                self._in_boundary = False
            if trainer.is_global_zero:
                os.replace(tmp, path)
                for logger in trainer.loggers:
                    logger.save()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._boundary(trainer)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._boundary(trainer)

    return _ResumeState


def ResumeState(dirpath: str | os.PathLike) -> Any:  # noqa: N802 (a class built on first use: Lightning loads lazily)
    """The callback ``tguide.fit`` adds to every run; see ``_ResumeState``."""
    global _RESUME_STATE
    if _RESUME_STATE is None:
        _RESUME_STATE = _resume_state_class()
    return _RESUME_STATE(dirpath)


_RESUME_STATE: type | None = None
