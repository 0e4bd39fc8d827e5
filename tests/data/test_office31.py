"""Office-31 amazon / webcam loader on the shared offline copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tguide.data.office31 import load_office31
from tguide.errors import TGuideError


def test_both_domains_real(data_root: Path) -> None:
    xa, ya, ca = load_office31("amazon", data_root)
    xw, yw, cw = load_office31("webcam", data_root)
    base = data_root / "domains/office31"
    for x, y, c, dom in ((xa, ya, ca, "amazon"), (xw, yw, cw, "webcam")):
        n_files = sum(1 for _ in (base / dom).glob("*/*.jpg"))
        assert x.shape == (n_files, 3, 32, 32) and x.dtype == torch.uint8
        assert len(c) == 31 and torch.equal(torch.unique(y), torch.arange(31))
        # class k has as many images as its folder has files
        assert [int((y == k).sum()) for k in range(31)] == [len(list((base / dom / n).glob("*.jpg"))) for n in c]
    assert ca == cw  # same class numbering in both domains


def test_size_option(data_root: Path) -> None:
    x, _, _ = load_office31("webcam", data_root, size=16)
    assert x.shape[1:] == (3, 16, 16)


def test_bad_domain() -> None:
    with pytest.raises(TGuideError, match="dslr"):
        load_office31("dslr")
