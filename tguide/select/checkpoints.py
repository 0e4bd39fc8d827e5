"""Checkpoint files: their sha256 (remembered per path, mtime and size) and a strict state-dict load
whose mismatch is one line.

Used by the zoo (:mod:`tguide.select.zoo`) and by the candidate sources that read files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tguide.errors import TGuideError

__all__ = ["file_sha256", "load_state_dict_checked"]

# (resolved path, mtime_ns, size) -> sha256 hex digest of a file already hashed in this process
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, remembered per (path, mtime, size) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _HASH_CACHE[key] = digest
    return digest


def _shorten(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def load_state_dict_checked(model: nn.Module, state: Mapping[str, Any], what: str = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)``, with a mismatch reported as one-line
    :class:`TGuideError` that summarises missing / unexpected keys and shape clashes."""
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError:
        pass
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) [{_shorten(missing)}]")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) [{_shorten(unexpected)}]")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) [{_shorten(shapes, 3)}]")
    detail = "; ".join(parts) or "load_state_dict(strict=True) refused it"
    raise TGuideError(f"{what} does not fit {type(model).__name__}: {detail}")


def read_checkpoint(
    path: str | os.PathLike[str], *, error: type[Exception] = TGuideError, weights_only: bool = True, what: str = ""
) -> Any:
    """``torch.load(path)`` on the CPU; any failure becomes one line of ``error`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - a corrupt, truncated or foreign file: one readable line
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise error(f"cannot load {what}{str(path)!r}: {type(err).__name__}: {first_line}") from err
