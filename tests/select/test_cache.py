"""Feature cache: keys change with every input, writes are atomic, damaged entries are misses."""

from __future__ import annotations

from pathlib import Path

import torch

from tguide.select.cache import FeatureCache, cache_key


def test_keys_and_roundtrip(tmp_path: Path):
    base = ("sha256:abc", "layer3", "avg", "Compose(...)", "digest")
    k = cache_key(*base)
    assert len({k, *(cache_key(*(base[:i] + ("other",) + base[i + 1:])) for i in range(5))}) == 6
    cache = FeatureCache(tmp_path)
    assert cache.load(k) is None and cache.misses == 1
    f, y = torch.randn(7, 3), torch.arange(7)
    cache.save(k, f, y, {"candidate": "c"})
    entry = cache.load(k)
    assert torch.equal(entry["features"], f) and torch.equal(entry["labels"], y) and cache.hits == 1
    assert [p.name for p in cache.entries()] == [f"{k}.pt"]
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind
    cache.path(k).write_bytes(b"half a file")  # damaged: a miss, not a crash
    assert cache.load(k) is None
    assert FeatureCache(None).load(k) is None
