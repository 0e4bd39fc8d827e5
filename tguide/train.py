"""Train and test one composed config: the plain function behind ``python -m tguide.fit``.

:func:`fit` seeds, builds the parts with ``hydra.utils.instantiate``, runs ``trainer.fit`` and
``trainer.test`` on the best checkpoint, and writes ``config.yaml`` and ``metrics.json`` into the
run folder. :func:`run` dispatches to a recipe's ``runner`` instead when it names one. No
command-line handling here (that is :mod:`tguide.cli`): both take a composed config and are
usable from Python and tests.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

__all__ = ["fit", "run", "instantiate_part"]

# Lightning's advice that does not apply to these recipes (small in-memory data sets, few steps per
# epoch, PyTorch's pytree deprecation inside Lightning); silenced around fit/test only.
_QUIET = (".*does not have many workers.*", ".*is smaller than the logging interval.*", ".*treespec, LeafSpec.*")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", pattern)
        yield


def instantiate_part(cfg: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, **kwargs)``; a failure becomes a one-line
    :class:`~tguide.errors.TGuideError` naming ``what`` (a user error of the part is passed on as is)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from tguide.errors import TGuideError

    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TGuideError):
            raise cause from None
        msg = " ".join(str(cause or err).split())
        raise TGuideError(f"could not build {what} ({cfg.get('_target_', '?')}): {msg}") from err


def fit(cfg: Any) -> dict[str, float]:
    """Train and test the composed config ``cfg``; return the final metrics.

    Writes into ``cfg.paths.run_dir``: ``config.yaml`` (resolved), checkpoints, logger files,
    and ``metrics.json`` (the last validation and the test metrics). ``cfg.resume`` continues
    that run from its newest ``last*.ckpt`` (:mod:`tguide.runs`).
    """
    import lightning as L

    from tguide.errors import ResumeError
    from tguide.loggers import ResumableCSVLogger, keep_rows_before
    from tguide.runs import ResumeState, config_dict, start_run

    run_dir, point = start_run(cfg)  # resume=PATH: the old folder, config checked against the stored one
    ckpt_path = None
    if point is not None:
        if point.checkpoint is None:
            raise ResumeError(
                f"resume={cfg.resume}: no last*.ckpt under {point.run_dir} (the run stopped before "
                "its first checkpoint, or checkpoints were off); start it again without resume="
            )
        ckpt_path = str(point.checkpoint)
        print(f"tguide.fit: resuming {point.run_dir} from {point.checkpoint.name}", flush=True)
    resolved = config_dict(cfg, resolve=True, what="the config")

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_part(cfg.data, "data")
    model = instantiate_part(cfg.model, "model")
    callbacks = [
        instantiate_part(c, f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c
    ]
    ckpt_dir = _checkpoint_dir(callbacks, run_dir)
    every = cfg.get("checkpoint_every_n_steps")
    if every:
        callbacks.append(_step_checkpoint(ckpt_dir, int(every)))
    callbacks.append(ResumeState(ckpt_dir))
    logger_cfg = cfg.get("logger")
    logger: Logger | None = instantiate_part(logger_cfg, "logger") if logger_cfg and "_target_" in logger_cfg else None
    if isinstance(logger, ResumableCSVLogger) and ckpt_path is not None:
        keep_rows_before(logger, _global_step(ckpt_path))
    if logger is None:  # LearningRateMonitor refuses to run without a logger; it has nothing to do then
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate_part(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        default_root_dir=str(run_dir),
    )
    if logger is not None:
        logger.log_hyperparams(resolved)

    with _quiet_lightning():
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.get("test_after_fit", True):
        has_ckpt = trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path
        with _quiet_lightning():
            results = trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_ckpt else None)
        for row in results:
            metrics.update({k: float(v) for k, v in row.items()})
    _finish_loggers(trainer)
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(f"tguide.fit: run folder {run_dir.resolve()}", flush=True)
    return metrics


def _checkpoint_dir(callbacks: list[Any], run_dir: Path) -> Path:
    """The first ModelCheckpoint's folder, else ``<run>/checkpoints``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found = next((c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
    return Path(found) if found else run_dir / "checkpoints"


def _step_checkpoint(dirpath: Path, every: int) -> Any:
    """A checkpoint every ``every`` training steps (``checkpoint_every_n_steps``), written as
    ``last-step.ckpt`` beside the epoch checkpoints, for epochs too long to lose."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tguide.errors import ConfigError

    if every < 1:
        raise ConfigError(f"checkpoint_every_n_steps must be a positive integer or null, got {every}")
    return ModelCheckpoint(
        dirpath=str(dirpath),
        filename="last-step",
        every_n_train_steps=every,
        save_top_k=1,
        monitor=None,
        save_last=False,
        enable_version_counter=False,
    )


def _global_step(ckpt_path: str) -> int:
    import torch

    from tguide.errors import ResumeError

    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception as err:  # a truncated or foreign file
        raise ResumeError(
            f"resume: cannot read the checkpoint {ckpt_path}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def _finish_loggers(trainer: Any) -> None:
    """Flush and close the W&B run now (rank 0), so its files are complete when ``fit`` returns."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero and logger._experiment is not None:
            logger.experiment.finish()


def run(cfg: Any) -> Any:
    """Run the composed config: ``cfg.runner`` if the recipe names one, else :func:`fit`.

    A recipe that is not "train a LightningModule then test it" (a few-shot study, a metric
    benchmark) sets ``runner: {_target_: package.module.function, _partial_: true}``; the
    function receives the whole composed config and writes into ``cfg.paths.run_dir``.
    """
    threads = cfg.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    runner_cfg = cfg.get("runner")
    if runner_cfg is None:
        return fit(cfg)
    runner = instantiate_part(runner_cfg, "runner")
    return runner(cfg)
