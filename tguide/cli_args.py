"""Reading the command line of ``python -m tguide.fit``: Hydra's flags apart from the overrides
(:func:`parse_cli`), and the overrides checked by composing the config once (:func:`check_overrides`),
with Hydra's errors turned into one line that says what to type instead (:func:`explain`).

The run itself (Hydra's main, failures, ``resume=``) is :mod:`tguide.cli`, which re-exports these names.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from tguide.config import GROUPS, available, compose

__all__ = ["PROG", "check_overrides", "explain", "parse_cli"]

PROG = "tguide.fit"


_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from tguide.errors import UserInputError

        raise UserInputError(f"{message} (see `python -m {PROG} --help`)")


def _flag_parser() -> _Parser:
    """Hydra 1.3's command-line flags (names as in its own parser); only given flags are kept."""
    p = _Parser(prog=PROG, add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS)
    for names in (
        ("--help", "-h"),
        ("--hydra-help",),
        ("--version",),
        ("--resolve",),
        ("--run", "-r"),
        ("--multirun", "-m"),
    ):
        p.add_argument(*names, action="store_true")
    for names in (
        ("--cfg", "-c"),
        ("--package", "-p"),
        ("--shell-completion", "-sc"),
        ("--config-path", "-cp"),
        ("--config-name", "-cn"),
        ("--config-dir", "-cd"),
        ("--experimental-rerun",),
    ):
        p.add_argument(*names)
    p.add_argument("--info", "-i", nargs="?", const="all", choices=_INFO_CHOICES)
    return p


def parse_cli(args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split a command line into Hydra's flags and the overrides: ``({flag: value}, overrides)``.

    Flags taking a value accept ``--flag VALUE`` and ``--flag=VALUE``; ``TGuideError`` for an
    unknown flag or a missing value.
    """
    from tguide.errors import UserInputError

    items = list(args)
    for i, arg in enumerate(items[:-1]):  # `--info seed=1`: the bare flag, not an info topic
        if arg in ("--info", "-i") and items[i + 1] not in _INFO_CHOICES:
            items[i] = "--info=all"
    parser = _flag_parser()
    flags, rest = parser.parse_known_args(items)
    unknown = [a for a in rest if a.startswith("-") and a != "-"]
    if unknown:
        known = ", ".join(a.option_strings[0] for a in parser._actions)
        head = unknown[0].partition("=")[0]
        raise UserInputError(f"unknown option {head!r}; options: {known} (see `python -m {PROG} --help`)")
    return vars(flags), rest


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


_TYPE_NAMES = {"Integer": "int", "Boolean": "bool", "Float": "float", "String": "str"}


def _suggest(key: str, overrides: Sequence[str]) -> str:
    """`` (did you mean X?)`` for a misspelt key, from the keys beside it in the config without it."""
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose([o for o in overrides if o.lstrip("+~").partition("=")[0] != key])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = list(node.keys()) if OmegaConf.is_dict(node) else []
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy; the error stands without it
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in keys], n=1)
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""


def explain(err: Exception, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error (unknown recipe, group option or key; a wrong type;
    an override that does not parse)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    text = str(err)
    if isinstance(err, MissingConfigException):
        for group in GROUPS:
            for o in overrides:
                key, _, value = o.lstrip("+~").partition("=")
                if key == group and f"{group}/{value}" in text:
                    kind = "recipe" if group == "recipe" else f"option for `{group}`"
                    return (
                        f"unknown {kind} {value!r}; available: {', '.join(available(group))} "
                        f"(files in recipes/{group}/)"
                    )
        return text.splitlines()[0]
    if isinstance(err, OverrideParseException):
        return f"cannot parse the overrides: {text.splitlines()[0]} (use key=value, e.g. trainer.max_epochs=3)"
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else text
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and cause is not None and type(cause).__name__ == "ValidationError":
        key = getattr(cause, "full_key", None) or "?"
        match = re.search(r"converted to (\w+)", str(cause))
        got = getattr(cause, "value", None) if hasattr(cause, "value") else None
        wanted = _TYPE_NAMES.get(match.group(1), match.group(1)) if match else "another type"
        where = "" if first.startswith("Error merging override") else f" ({first})"
        return f"{key} expects {wanted}, got {got!r}{where}; see `python -m {PROG} --cfg job` for the defaults"
    if first.startswith("Could not override"):
        key = first.split("'")[1] if "'" in first else first
        return (
            f"unknown key {key!r}: it is not in the composed config{_suggest(key, overrides)}. Check the "
            f"spelling (see `python -m {PROG} --cfg job`), or add a new key with +{key}=VALUE"
        )
    if "Could not append" in first or "Could not delete" in first:
        return first
    return " ".join(lines[:2])


def check_overrides(args: Sequence[str], *, compose_check: bool = True) -> str | None:
    """Return a one-line message if the command line ``args`` does not compose (unknown recipe,
    option or key, a wrong type), else ``None``. Composes the config once (not at all without
    ``compose_check``: a resumed run checks its overrides against its stored config)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tguide.errors import TGuideError

    try:  # drop Hydra's own flags (--cfg job, -m, --config-dir DIR, ...)
        flags, parsed = parse_cli(args)
    except TGuideError as err:
        return str(err)
    if any(k in flags for k in ("config_name", "config_path", "config_dir")):
        return None  # another config tree: Hydra checks it
    plain = [o for o in parsed if not o.lstrip("+~").startswith("hydra.")]
    for o in plain:
        if o.lstrip("+~").partition("=")[0] == "ckpt_path":
            return (
                "ckpt_path is not a tguide.fit key; to continue a run use resume=PATH (its run folder or a .ckpt file)"
            )
    if flags.get("multirun") and any(o.partition("=")[0] == "resume" for o in plain):
        return "resume= continues one run; it cannot be combined with -m/--multirun"
    if not compose_check:
        return None
    try:
        if flags.get("multirun"):  # a sweep (seed=0,1,2 or range(...)) is checked with its first value
            plain = _first_of_sweeps(plain)
        compose(plain)
    except (HydraException, OmegaConfBaseException) as err:
        if type(err).__name__ == "OverrideParseException" and flags.get("multirun"):
            return f"cannot parse the overrides: {str(err).splitlines()[0]} (use key=value or key=a,b,c with -m)"
        return explain(err, plain)
    return None
