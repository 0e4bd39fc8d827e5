"""Where datasets live: ``TGUIDE_DATA``, else ``~/.cache/tguide/data``.

Every loader resolves its folder through :func:`dataset_dir`, so one environment
variable (or a ``root=`` argument) points the whole project at a data folder, and a
missing folder fails with a message that names the path searched and the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from tguide.errors import DataNotFoundError

ENV_VAR = "TGUIDE_DATA"
DEFAULT_ROOT = Path("~/.cache/tguide/data")

__all__ = ["ENV_VAR", "DEFAULT_ROOT", "data_root", "dataset_dir"]


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$TGUIDE_DATA``, else ``~/.cache/tguide/data``.

    Raises :class:`~tguide.errors.DataNotFoundError` when that folder does not exist.
    """
    if root is not None and str(root) != "":
        path, source = Path(root), "the `root` argument (data.root=...)"
    elif os.environ.get(ENV_VAR):
        path, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        path, source = DEFAULT_ROOT, f"the default (set ${ENV_VAR} to change it)"
    path = path.expanduser()
    if not path.is_dir():
        raise DataNotFoundError(
            f"data root {str(path.resolve())!r} does not exist (from {source}); "
            f"point {ENV_VAR} at the folder that holds the datasets, e.g. {ENV_VAR}=../shared/data"
        )
    return path.resolve()


def dataset_dir(
    name: str,
    root: str | os.PathLike[str] | None = None,
    required: tuple[str, ...] = (),
) -> Path:
    """Return ``<data root>/<name>``, checking that it and the ``required`` files inside it exist."""
    base = data_root(root)
    folder = base / name
    if not folder.is_dir():
        raise DataNotFoundError(
            f"dataset {name!r} not found: {str(folder)!r} does not exist under the data root "
            f"{str(base)!r}; put the dataset there or point {ENV_VAR} at a root that has it"
        )
    missing = [f for f in required if not (folder / f).exists()]
    if missing:
        raise DataNotFoundError(f"dataset {name!r} at {str(folder)!r} is incomplete: missing {', '.join(missing)}")
    return folder
