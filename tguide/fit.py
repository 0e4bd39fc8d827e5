"""``python -m tguide.fit recipe=NAME key=value ...``: compose a recipe, train, test, write a run folder.

The entry point only: the command line is :mod:`tguide.cli`, the training function
:mod:`tguide.train`, composing and the typed schema :mod:`tguide.config`. The names below stay
importable from here.
"""

from __future__ import annotations

from tguide.cli import EXIT_USAGE, check_overrides, main, parse_cli
from tguide.config import RECIPES_MODULE, available, compose
from tguide.train import fit, run

__all__ = ["main", "fit", "run", "compose", "available", "check_overrides", "parse_cli", "EXIT_USAGE", "RECIPES_MODULE"]

if __name__ == "__main__":
    main()
