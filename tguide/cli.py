"""The command line of ``python -m tguide.fit recipe=NAME key=value ...``: check, then hand over to Hydra.

:func:`main` splits Hydra's flags from the overrides (:func:`parse_cli`), composes the config
once to check the overrides (:func:`check_overrides`; the types and known keys come from the
structured configs of :mod:`tguide.config`, so a wrong type or an unknown key is Hydra's own
error, turned into one line by :mod:`tguide.cli_args`), then runs Hydra's main, whose task calls
:func:`tguide.train.run` with the composed config.

Errors: every mistake in the user's input (composition, build, fit or test time, any rank)
is a :class:`tguide.errors.TGuideError` and ends the run with one line on stderr and exit code 2
(``TGUIDE_DEBUG=1`` adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tguide.cli_args import PROG, check_overrides, explain, parse_cli
from tguide.config import RECIPES_MODULE, compose, register_schemas

__all__ = ["main", "parse_cli", "check_overrides", "EXIT_USAGE"]

EXIT_USAGE = 2
log = logging.getLogger("tguide.fit")


def _debug() -> bool:
    return os.environ.get("TGUIDE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key]) + (0 if key == "RANK" else int(os.environ.get("NODE_RANK", "0") or 0))
    return 0


def _fail(message: str, *, show_traceback: bool = False) -> NoReturn:
    """One line on stderr (``(rank N)`` on ranks > 0) and exit code 2."""
    if show_traceback:
        traceback.print_exc()
    rank = _rank()
    where = f" (rank {rank})" if rank else ""
    line = " ".join(str(message).split()) or "(no message)"
    print(f"{PROG}: error{where}: {line}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


# ----------------------------------------------------------------------------- the run


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


# folders that held something before this process started (hydra.run.dir=EXISTING): never removed
_PREEXISTING: set[str] = set()


def _fresh_dirs(cfg: Any) -> list[Path]:
    """The run folders this run made (nothing in them but Hydra's start files)."""
    dirs = {str(Path(cfg.paths.run_dir).resolve())}
    try:
        from hydra.core.hydra_config import HydraConfig

        dirs.add(str(Path(HydraConfig.get().runtime.output_dir).resolve()))
    except Exception:  # noqa: BLE001 - not inside Hydra's main (resume path)
        pass
    return [
        Path(d)
        for d in sorted(dirs)
        if d not in _PREEXISTING and (not Path(d).exists() or set(os.listdir(d)) <= {".hydra", "fit.log"})
    ]


def _after_failure(cfg: Any, fresh: list[Path], message: str) -> None:
    """A run that failed before doing any work leaves no folder; one that failed later keeps its
    folder and says so in its fit.log (rank 0 decides)."""
    import shutil

    from tguide.runs import did_work

    try:
        run_dir = Path(cfg.paths.run_dir)
    except Exception:  # noqa: BLE001 - the run folder itself does not resolve
        return
    if not _is_rank_zero():
        return
    if fresh and not did_work(run_dir):
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        return
    log.error(
        "the run failed after it had started work; this folder keeps what it wrote (resume=%s "
        "continues it from its last checkpoint, if it has one): %s",
        run_dir,
        message,
    )


def _task(cfg: Any) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tguide.errors import TGuideError
    from tguide.train import run

    # Lightning prints its own console lines; keep Hydra's root handlers for the log file only.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    try:
        fresh = _fresh_dirs(cfg)
    except OmegaConfBaseException:
        fresh = []
    try:  # the one place where user errors become one line and exit code 2, on every rank
        if _is_rank_zero():
            print(OmegaConf.to_yaml(cfg, resolve=True), flush=True)
        run(cfg)
    except TGuideError as err:
        _after_failure(cfg, fresh, str(err))
        _fail(str(err), show_traceback=_debug())
    except OmegaConfBaseException as err:  # a value that does not resolve (${nope}), a missing ??? value
        _after_failure(cfg, fresh, str(err).splitlines()[0])
        _fail(f"config: {str(err).splitlines()[0]}", show_traceback=_debug())
    except Exception as err:  # a bug: the traceback stays
        _after_failure(cfg, fresh, f"{type(err).__name__}: {err}")
        raise


def _override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _stored_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was started with (Hydra's ``.hydra/overrides.yaml``), run-folder keys aside."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [
        str(o)
        for o in OmegaConf.load(path)
        if not _override_key(str(o)).startswith("hydra.") and _override_key(str(o)) != "resume"
    ]


def resume_config(value: str, overrides: Sequence[str]) -> Any:
    """``resume=VALUE key=value ...``: the stored config of that run with the overrides' values on
    top (:func:`tguide.runs.restore_config`); composes only when there are overrides, to read
    their values (with the run's own recipe and overrides below them)."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tguide.errors import ResumeError, UserInputError
    from tguide.runs import find_resume, restore_config

    point = find_resume(value)
    asked = [o for o in overrides if not _override_key(o).startswith("hydra.") and _override_key(o) != "resume"]
    changes: dict[str, Any] = {}
    if asked:
        if any(o.startswith("~") for o in asked):
            raise ResumeError("resume=: keys cannot be deleted (~key) from a resumed run; start a new run")
        keys = {_override_key(o) for o in asked}
        below = [o for o in _stored_overrides(point.run_dir) if _override_key(o) not in keys]
        try:
            composed = compose([*below, *asked])
        except (HydraException, OmegaConfBaseException) as err:
            raise UserInputError(explain(err, asked)) from err
        stored = OmegaConf.load(point.run_dir / "config.yaml")
        # a config.yaml that is not a mapping is refused by restore_config below
        stored_name = stored.get("name") if isinstance(stored, DictConfig) else None
        for key in keys:
            if key == "recipe":
                recipe = next(o.partition("=")[2] for o in asked if _override_key(o) == "recipe")
                if stored_name is not None and recipe != stored_name:
                    raise ResumeError(
                        f"cannot resume {point.run_dir} with recipe={recipe}: it ran "
                        f"{stored_name!r}; start a new run for another recipe"
                    )
                continue
            node = OmegaConf.select(composed, key, throw_on_missing=False)
            changes[key] = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    return restore_config(point, changes, value)


def _run_resumed(cfg: Any) -> None:
    """Run a restored config in its own folder, outside Hydra's main: fit.log is appended to."""
    run_dir = Path(cfg.paths.run_dir)
    if _is_rank_zero():
        handler = logging.FileHandler(run_dir / "fit.log", mode="a")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
    _PREEXISTING.add(str(run_dir.resolve()))
    _task(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry: check the overrides, then run Hydra's main over ``tguide.recipes``; ``resume=RUN``
    continues that run from its stored config instead (:func:`resume_config`)."""
    import hydra

    from tguide.errors import TGuideError

    register_schemas()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, overrides = parse_cli(args)
        if not any(k in flags for k in ("help", "hydra_help", "info", "version", "shell_completion")):
            problem = check_overrides(args, compose_check=not _resume_value(overrides))
            if problem:
                _fail(problem)
            resume = _resume_value(overrides)
            if resume and not flags:
                _run_resumed(resume_config(resume, overrides))
                return
            if resume:
                _fail(f"resume= takes key=value overrides only, not {', '.join('--' + f for f in flags)}")
            run_dir = next((o.partition("=")[2] for o in overrides if o.startswith("hydra.run.dir=")), None)
            if run_dir and Path(run_dir).is_dir() and any(Path(run_dir).iterdir()):
                _PREEXISTING.add(str(Path(run_dir).resolve()))
    except TGuideError as err:
        _fail(str(err), show_traceback=_debug())
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=f"pkg://{RECIPES_MODULE}", config_name="config", version_base="1.3")(_task)()


def _resume_value(overrides: Sequence[str]) -> str | None:
    value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0] == "resume"), None)
    return None if not value or value == "null" else value
