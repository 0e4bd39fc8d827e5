"""``python -m tguide.fit recipe=NAME key=value ...``: compose a recipe, train, test, write a run folder.

The command-line layer is thin: :func:`main` checks the overrides against the recipes
(one clear line and exit code 2 for an unknown recipe, group option or key), then hands
over to Hydra, whose task calls :func:`fit` with the composed config. :func:`fit` is a
plain function (usable from Python and tests): seed, build the parts with
``hydra.utils.instantiate``, ``trainer.fit``, ``trainer.test`` on the best checkpoint,
write ``config.yaml`` and ``metrics.json`` into the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

RECIPES_MODULE = "tguide.recipes"
EXIT_USAGE = 2
log = logging.getLogger("tguide.fit")


def _fail(message: str) -> None:
    print(f"tguide.fit: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


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

    from hydra._internal.utils import get_args_parser

    try:  # drop Hydra's own flags (--cfg job, -m, --config-dir DIR, ...) the way Hydra parses them
        parsed = get_args_parser().parse_args(list(overrides))
    except SystemExit:
        return "cannot parse the command line; see `python -m tguide.fit --help`"
    plain = [o for o in parsed.overrides if not o.lstrip("+~").startswith("hydra.")]
    if parsed.multirun:  # a sweep (seed=0,1,2 or range(...)) is checked with its first value
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

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")

    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if _is_rank_zero():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _instantiate(cfg.data, "data")
    model = _instantiate(cfg.model, "model")
    callbacks = [
        _instantiate(c, f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c
    ]
    logger_cfg = cfg.get("logger")
    logger = _instantiate(logger_cfg, "logger") if logger_cfg and "_target_" in logger_cfg else False
    if not logger:  # LearningRateMonitor refuses to run without a logger; it has nothing to do then
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=logger,
                           default_root_dir=str(run_dir))
    if logger:
        logger.log_hyperparams(resolved)

    trainer.fit(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.get("test_after_fit", True):
        has_ckpt = trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path
        results = trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_ckpt else None)
        for row in results:
            metrics.update({k: float(v) for k, v in row.items()})
    _finish_loggers(trainer)
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(f"tguide.fit: run folder {run_dir.resolve()}", flush=True)
    return metrics


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
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    return runner(cfg)


def _task(cfg: Any) -> None:
    from omegaconf import OmegaConf

    from tguide.errors import TGuideError

    # Lightning prints its own console lines; keep Hydra's root handlers for the log file only.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if _is_rank_zero():
        print(OmegaConf.to_yaml(cfg, resolve=True), flush=True)
    try:
        run(cfg)
    except TGuideError as err:
        _fail(str(err))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry: check the overrides, then run Hydra's main over ``tguide.recipes``."""
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--info") for a in args):
        problem = check_overrides(args)
        if problem:
            _fail(problem)
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=f"pkg://{RECIPES_MODULE}", config_name="config", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
