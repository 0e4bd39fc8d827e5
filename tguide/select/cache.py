"""On-disk feature cache for ranking: one file per (candidate, layer, transform, target subset).

A key is the sha256 of the candidate's content fingerprint (its weights file's sha256, or the
spec of a seeded random init), the layer, its pooling, the input transform's ``repr`` and the
digest of the target samples (which files, which labels, in which order). A changed file, a
different transform or another subset gives another key, so a stale entry is never read.

Writes are atomic (a temporary file in the same folder, then ``os.replace``): a ranking killed
half-way leaves complete entries only, and the next run resumes from them. An unreadable entry
(a disk error, a foreign file) is treated as missing and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["FeatureCache", "cache_key"]

_VERSION = 1


def cache_key(fingerprint: str, layer: str, pool: str, transform: str, target: str) -> str:
    """The hex sha256 naming one cache entry."""
    blob = json.dumps(
        {
            "v": _VERSION,
            "fingerprint": fingerprint,
            "layer": layer,
            "pool": pool,
            "transform": transform,
            "target": target,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureCache:
    """Feature tensors on disk under ``root`` (``None``: a no-op cache that stores nothing)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored entry ``{"features": (N, D), "labels": (N,), "meta": {...}}`` or ``None``."""
        if self.root is None:
            return None
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss; it is rewritten
            self.misses += 1
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("features"), Tensor):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def save(self, key: str, features: Tensor, labels: Tensor, meta: dict[str, Any] | None = None) -> None:
        """Store an entry atomically (tmp file + ``os.replace``)."""
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(
                    {
                        "features": features.detach().cpu().contiguous(),
                        "labels": labels.detach().cpu(),
                        "meta": dict(meta or {}),
                    },
                    fh,
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self) -> list[Path]:
        """The complete entries on disk."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(self.root.glob("*/*.pt"))
