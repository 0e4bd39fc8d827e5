"""Image folders as targets: layouts, splits, modes, one-line errors; the named targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tguide.data.image_folder import (
    ImageFolderDataModule,
    ImageFolderError,
    load_target,
    scan_image_folder,
    stratified_split,
)


def _img(path: Path, mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (12, 10)
    if mode == "L":
        im = Image.new("L", size, value)
    elif mode == "RGBA":
        im = Image.new("RGBA", size, (value, 0, 0, 128))
    else:
        im = Image.new("RGB", size, (value, value // 2, 0))
    im.save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    modes = ["L", "RGB", "RGBA"]
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(10):
            _img(tmp_path / "imgs" / name / f"{i:02d}.png", modes[(c + i) % 3], 20 * c + i)
    return tmp_path / "imgs"


def test_scan_and_datamodule_split(folder: Path):
    data = scan_image_folder(folder)
    assert data.classes == ("cat", "dog", "eel") and len(data) == 30
    assert data.keys[0] == "cat/00.png" and torch.bincount(data.labels).tolist() == [10, 10, 10]
    dm = ImageFolderDataModule(folder, batch_size=8, split=(0.6, 0.2, 0.2), image_size=16, seed=1)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.parts.items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    for part in dm.parts.values():
        assert torch.bincount(part.labels, minlength=3).min() >= 2  # stratified
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64  # grey and RGBA converted to RGB
    again = ImageFolderDataModule(folder, split=(0.6, 0.2, 0.2), seed=1)
    again.setup()
    assert again.parts["test"].keys == dm.parts["test"].keys


def test_existing_split_folders_are_used(tmp_path: Path):
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for name in ("a", "b"):
            for i in range(n):
                _img(tmp_path / split / name / f"{i}.jpg", "RGB", 10 * i)
    dm = ImageFolderDataModule(tmp_path, image_size=8)
    dm.setup()
    assert {k: len(v) for k, v in dm.parts.items()} == {"train": 8, "val": 4, "test": 4}
    assert load_target(tmp_path, split="val").classes == ("a", "b")


def test_one_line_errors(tmp_path: Path, folder: Path):
    with pytest.raises(ImageFolderError, match=r"does not exist"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match=r"no class sub-folders"):
        scan_image_folder(tmp_path / "empty")
    _img(tmp_path / "one" / "only" / "0.png", "L", 3)
    with pytest.raises(ImageFolderError, match=r"one class only"):
        scan_image_folder(tmp_path / "one")
    (folder / "dog" / "broken.jpg").write_bytes(b"not really a jpeg")
    data = scan_image_folder(folder)
    bad = data.keys.index("dog/broken.jpg")
    with pytest.raises(ImageFolderError, match=r"cannot read image '.*broken\.jpg'") as err:
        data.image(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ImageFolderError, match=r"unknown target 'nowhere'"):
        load_target("nowhere")


def test_stratified_split_and_max_samples(folder: Path):
    y = torch.arange(4).repeat_interleave(25)
    parts = stratified_split(y, (0.8, 0.2), seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    assert torch.bincount(y[parts[1]]).tolist() == [5, 5, 5, 5]
    sub = load_target(folder, max_samples=6, seed=0)
    assert torch.bincount(sub.labels).tolist() == [2, 2, 2]


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("office31_webcam", 31), ("mnist_m", 10), ("mnist", 10)])
def test_named_targets(name: str, classes: int):
    data = load_target(name, max_samples=40, seed=0)
    assert len(data) == 40 and len(data.classes) == classes
    im = data.image(0)
    assert isinstance(np.asarray(im), np.ndarray) and im.size[0] >= 16
