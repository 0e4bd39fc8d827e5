import zipfile

import pytest
import torch

from tguide.data.omniglot import ZIPS, load_omniglot
from tguide.errors import TGuideError


def _members(root):
    """(alphabet/character/file) of every png in both zips, read independently of the loader."""
    out = []
    for name in ZIPS:
        with zipfile.ZipFile(root / "omniglot" / name) as zf:
            out += ["/".join(m.split("/")[1:]) for m in zf.namelist() if m.endswith(".png")]
    return out


def test_counts_shapes_and_dedup(data_root):
    members = _members(data_root)
    unique = set(members)
    assert len(members) - len(unique) == 1000  # Greek + Latin appear in both zips
    data = load_omniglot(data_root)
    assert data.images.shape == (len(unique), 28, 28) == (4840, 28, 28)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert len(data.characters) == len({m.rsplit("/", 1)[0] for m in unique}) == 242
    assert torch.bincount(data.labels).tolist() == [20] * 242
    assert sorted(set(data.alphabets)) == ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)",
                                           "Korean", "Latin", "Sanskrit", "Tagalog"]


def test_inverted_white_ink_on_black(data_root):
    x = load_omniglot(data_root).images.float()
    assert float(x.median()) == 0.0  # background is black
    assert float(x.amax(dim=(1, 2)).min()) > 100  # every image has bright strokes
    corners = torch.cat([x[:, 0, 0], x[:, -1, -1]])
    assert float(corners.mean()) < 5


def test_alphabet_class_split(data_root):
    data = load_omniglot(data_root)
    val = set(data.classes_of(["Tagalog", "Japanese_(katakana)"]))
    rest = set(range(len(data.characters))) - val
    assert val and rest and not (val & rest)
    assert all(data.characters[c].split("/")[0] in ("Tagalog", "Japanese_(katakana)") for c in val)
    with pytest.raises(TGuideError, match="unknown Omniglot alphabet.*available: Balinese"):
        data.classes_of(["Klingon"])
