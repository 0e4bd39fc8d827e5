"""``python -m tguide.fit recipe=NAME key=value ...``: compose a recipe, train, test, write a run folder.

The command-line layer is thin: :func:`main` checks the overrides against the recipes
(one clear line and exit code 2 for an unknown recipe, group option or key), then hands
over to Hydra, whose task calls :func:`fit` with the composed config. :func:`fit` is a
plain function (usable from Python and tests): seed, build the parts with
``hydra.utils.instantiate``, ``trainer.fit``, ``trainer.test`` on the best checkpoint,
write ``config.yaml`` and ``metrics.json`` into the run folder. ``resume=PATH`` continues a
run in its own folder (:mod:`tguide.runs`).

Errors: every mistake in the user's input (composition, build, fit or test time, any rank)
is a :class:`tguide.errors.TGuideError` and ends the run with one line on stderr and exit code 2
(``TGUIDE_DEBUG=1`` adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

RECIPES_MODULE = "tguide.recipes"
EXIT_USAGE = 2
log = logging.getLogger("tguide.fit")

# Lightning's advice that does not apply to these recipes (small in-memory data sets, few steps per
# epoch, PyTorch's pytree deprecation inside Lightning); silenced around fit/test only.
_QUIET = (".*does not have many workers.*", ".*is smaller than the logging interval.*", ".*treespec, LeafSpec.*")


def _debug() -> bool:
    return os.environ.get("TGUIDE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key]) + (0 if key == "RANK" else int(os.environ.get("NODE_RANK", "0") or 0))
    return 0


def _fail(message: str, *, show_traceback: bool = False) -> None:
    """One line on stderr (``(rank N)`` on ranks > 0) and exit code 2."""
    if show_traceback:
        traceback.print_exc()
    rank = _rank()
    where = f" (rank {rank})" if rank else ""
    line = " ".join(str(message).split()) or "(no message)"
    print(f"tguide.fit: error{where}: {line}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", pattern)
        yield


# Hydra's command-line flags (as its own argument parser defines them, Hydra 1.3): name -> (aliases,
# takes a value). ``--info`` takes an optional value from its own choices.
_FLAGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "help": (("--help", "-h"), False),
    "hydra_help": (("--hydra-help",), False),
    "version": (("--version",), False),
    "cfg": (("--cfg", "-c"), True),
    "resolve": (("--resolve",), False),
    "package": (("--package", "-p"), True),
    "run": (("--run", "-r"), False),
    "multirun": (("--multirun", "-m"), False),
    "shell_completion": (("--shell-completion", "-sc"), False),
    "config_path": (("--config-path", "-cp"), True),
    "config_name": (("--config-name", "-cn"), True),
    "config_dir": (("--config-dir", "-cd"), True),
    "experimental_rerun": (("--experimental-rerun",), True),
    "info": (("--info", "-i"), False),
}
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def parse_cli(args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split a command line into Hydra's flags and the overrides: ``({flag: value}, overrides)``.

    Flags taking a value accept ``--flag VALUE`` and ``--flag=VALUE``; ``TGuideError`` for an
    unknown flag or a missing value.
    """
    from tguide.errors import UserInputError

    alias = {a: (name, takes) for name, (aliases, takes) in _FLAGS.items() for a in aliases}
    flags: dict[str, Any] = {}
    overrides: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            overrides.append(arg)
            continue
        head, eq, tail = arg.partition("=")
        if head not in alias:
            known = ", ".join(aliases[0] for aliases, _ in _FLAGS.values())
            raise UserInputError(f"unknown option {head!r}; options: {known} (see `python -m tguide.fit --help`)")
        name, takes = alias[head]
        if name == "info":
            if eq:
                flags[name] = tail
            elif i < len(items) and items[i] in _INFO_CHOICES:
                flags[name] = items[i]
                i += 1
            else:
                flags[name] = "all"
        elif takes:
            if eq:
                flags[name] = tail
            elif i < len(items):
                flags[name] = items[i]
                i += 1
            else:
                raise UserInputError(f"option {head} needs a value (see `python -m tguide.fit --help`)")
        else:
            flags[name] = True
    return flags, overrides


def available(group: str) -> list[str]:
    """The options of a config group (``available("recipe")`` lists the recipes)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=RECIPES_MODULE, version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options(group)
    GlobalHydra.instance().clear()
    return sorted(options)


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose the config for ``overrides`` without running (Hydra runtime keys stay unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=RECIPES_MODULE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def check_overrides(overrides: Sequence[str]) -> str | None:
    """Return a one-line message if ``overrides`` do not compose (unknown recipe, option or key)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from tguide.errors import TGuideError

    try:  # drop Hydra's own flags (--cfg job, -m, --config-dir DIR, ...)
        flags, parsed = parse_cli(overrides)
    except TGuideError as err:
        return str(err)
    if any(k in flags for k in ("config_name", "config_path", "config_dir")):
        return None  # another config tree: Hydra checks it
    plain = [o for o in parsed if not o.lstrip("+~").startswith("hydra.")]
    for o in plain:
        if o.lstrip("+~").partition("=")[0] == "ckpt_path":
            return ("ckpt_path is not a tguide.fit key; to continue a run use resume=PATH "
                    "(its run folder or a .ckpt file)")
    if flags.get("multirun") and any(o.partition("=")[0] == "resume" for o in plain):
        return "resume= continues one run; it cannot be combined with -m/--multirun"
    if flags.get("multirun"):  # a sweep (seed=0,1,2 or range(...)) is checked with its first value
        try:
            plain = _first_of_sweeps(plain)
        except OverrideParseException as err:
            return f"cannot parse the overrides: {str(err).splitlines()[0]} (use key=value or key=a,b,c with -m)"
    try:
        composed = compose(plain)
    except MissingConfigException as err:
        text = str(err)
        for group in ("recipe", "data", "model", "trainer", "logger", "callbacks"):
            for o in plain:
                key, _, value = o.lstrip("+~").partition("=")
                if key == group and f"{group}/{value}" in text:
                    kind = "recipe" if group == "recipe" else f"option for `{group}`"
                    return (f"unknown {kind} {value!r}; available: {', '.join(available(group))} "
                            f"(files in recipes/{group}/)")
        return text.splitlines()[0]
    except OverrideParseException as err:
        return f"cannot parse the overrides: {str(err).splitlines()[0]} (use key=value, e.g. trainer.max_epochs=3)"
    except ConfigCompositionException as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        first = lines[0] if lines else str(err)
        if first.startswith("Could not override"):
            key = first.split("'")[1] if "'" in first else first
            return (f"unknown key {key!r}: it is not in the composed config. Check the spelling "
                    f"(see `python -m tguide.fit --cfg job`), or add a new key with +{key}=VALUE")
        if "Could not append" in first or "Could not delete" in first:
            return first
        return " ".join(lines[:2])
    return _check_value_types(plain, composed)


def _first_of_sweeps(overrides: Sequence[str]) -> list[str]:
    """Replace every sweep override (``key=a,b``, ``key=range(1,4)``, ``key=choice(x,y)``) by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()), None)
            out.append(text if first is None else f"{parsed.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def _check_value_types(overrides: Sequence[str], composed: Any) -> str | None:
    """An override may not change the type of a number or flag (``trainer.max_epochs=abc``)."""
    from omegaconf import OmegaConf

    groups = ("recipe", "data", "model", "trainer", "logger", "callbacks")
    values = [o for o in overrides if "=" in o and not o.startswith(("+", "~"))
              and o.split("=", 1)[0] not in groups]
    if not values:
        return None
    base = compose([o for o in overrides if o not in values])
    for override in values:
        key = override.split("=", 1)[0]
        old = OmegaConf.select(base, key, throw_on_missing=False, throw_on_resolution_failure=False)
        new = OmegaConf.select(composed, key, throw_on_missing=False, throw_on_resolution_failure=False)
        if old is None or new is None or isinstance(old, str) or OmegaConf.is_config(old):
            continue
        expected = {bool: (bool,), int: (int,), float: (int, float)}.get(type(old))
        if expected and (not isinstance(new, expected) or (isinstance(new, bool) and type(old) is not bool)):
            return (f"{key} expects {type(old).__name__} (default {old!r}), got {new!r}; "
                    f"e.g. {key}={old!r}".replace("True", "true").replace("False", "false"))
    return None


def _instantiate(cfg: Any, what: str, **kwargs: Any) -> Any:
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
    and ``metrics.json`` (the last validation and the test metrics).
    """
    import lightning as L
    from omegaconf import OmegaConf

    from tguide.errors import ResumeError
    from tguide.loggers import ResumableCSVLogger, keep_rows_before
    from tguide.runs import ResumeState, start_run

    run_dir, point = start_run(cfg)  # resume=PATH: the old folder, config checked against the stored one
    ckpt_path = None
    if point is not None:
        if point.checkpoint is None:
            raise ResumeError(f"resume={cfg.resume}: no last*.ckpt under {point.run_dir} (the run stopped before "
                              "its first checkpoint, or checkpoints were off); start it again without resume=")
        ckpt_path = str(point.checkpoint)
        print(f"tguide.fit: resuming {point.run_dir} from {point.checkpoint.name}", flush=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _instantiate(cfg.data, "data")
    model = _instantiate(cfg.model, "model")
    callbacks = [
        _instantiate(c, f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c
    ]
    ckpt_dir = _checkpoint_dir(callbacks, run_dir)
    every = cfg.get("checkpoint_every_n_steps")
    if every:
        callbacks.append(_step_checkpoint(ckpt_dir, int(every)))
    callbacks.append(ResumeState(ckpt_dir))
    logger_cfg = cfg.get("logger")
    logger = _instantiate(logger_cfg, "logger") if logger_cfg and "_target_" in logger_cfg else False
    if isinstance(logger, ResumableCSVLogger) and ckpt_path is not None:
        keep_rows_before(logger, _global_step(ckpt_path))
    if not logger:  # LearningRateMonitor refuses to run without a logger; it has nothing to do then
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=logger,
                           default_root_dir=str(run_dir))
    if logger:
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
    return ModelCheckpoint(dirpath=str(dirpath), filename="last-step", every_n_train_steps=every, save_top_k=1,
                           monitor=None, save_last=False, enable_version_counter=False)


def _global_step(ckpt_path: str) -> int:
    import torch

    from tguide.errors import ResumeError

    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception as err:  # a truncated or foreign file
        raise ResumeError(f"resume: cannot read the checkpoint {ckpt_path}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from err


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
    runner = _instantiate(runner_cfg, "runner")
    return runner(cfg)


def _task(cfg: Any) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tguide.errors import TGuideError

    # Lightning prints its own console lines; keep Hydra's root handlers for the log file only.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    try:  # the one place where user errors become one line and exit code 2, on every rank
        if _is_rank_zero():
            print(OmegaConf.to_yaml(cfg, resolve=True), flush=True)
        run(cfg)
    except TGuideError as err:
        _fail(str(err), show_traceback=_debug())
    except OmegaConfBaseException as err:  # a value that does not resolve (${nope}), a missing ??? value
        _fail(f"config: {str(err).splitlines()[0]}", show_traceback=_debug())


def _resume_args(args: list[str], flags: dict[str, Any], overrides: list[str]) -> list[str]:
    """``resume=PATH``: run Hydra in the resumed run's folder (one folder per run), unless
    ``hydra.run.dir`` is given."""
    from tguide.runs import find_resume

    value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0] == "resume"), None)
    if not value or value == "null" or any(o.startswith("hydra.run.dir=") for o in overrides):
        return args
    point = find_resume(value)
    return [*args, f"hydra.run.dir={point.run_dir}"]


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry: check the overrides, then run Hydra's main over ``tguide.recipes``."""
    import hydra

    from tguide.errors import TGuideError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, overrides = parse_cli(args)
        if not any(k in flags for k in ("help", "hydra_help", "info", "version", "shell_completion")):
            problem = check_overrides(args)
            if problem:
                _fail(problem)
            args = _resume_args(args, flags, overrides)
    except TGuideError as err:
        _fail(str(err), show_traceback=_debug())
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=f"pkg://{RECIPES_MODULE}", config_name="config", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
