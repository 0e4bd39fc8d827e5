"""Helpers for callback tests: read the history of an offline W&B run file."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterator

import pytest

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type, data) records
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, buf = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            yield buf
            buf = b""


def read_wandb_history(path: Path) -> list[dict[str, object]]:
    """The ``run.log`` rows of an offline run file ``run-*.wandb``, values decoded from JSON."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for blob in _records(path):
        rec = pb.Record()
        rec.ParseFromString(blob)
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


@pytest.fixture
def wandb_history() -> Callable[[Path], list[dict[str, object]]]:
    return read_wandb_history
