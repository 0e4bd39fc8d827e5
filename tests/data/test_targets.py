"""Targets: image folders (layouts, modes, one-line errors), the named targets and their fixed
parts, the one seeded class-stratified split, the Target type."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tguide.data.image_folder import ImageFolderDataModule
from tguide.data.splits import SplitError
from tguide.data.targets import (
    BENCHMARK_TARGETS,
    PER_CLASS,
    TARGETS,
    Target,
    TargetError,
    load_target,
    open_image,
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


# -- image folders ------------------------------------------------------------------------------

def test_scan_and_datamodule_split(folder: Path):
    data = scan_image_folder(folder)
    assert data.classes == ("cat", "dog", "eel") and len(data) == 30
    assert data.keys[0] == "cat/00.png" and torch.bincount(data.labels).tolist() == [10, 10, 10]
    assert all(isinstance(it, str) for it in data.items)
    dm = ImageFolderDataModule(folder, batch_size=8, split=(0.6, 0.2, 0.2), image_size=16, seed=1)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.parts.items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    for part in dm.parts.values():
        assert torch.bincount(part.labels, minlength=3).tolist() == [len(part) // 3] * 3  # stratified
    keys = [k for part in dm.parts.values() for k in part.keys]
    assert sorted(keys) == sorted(data.keys)  # disjoint and complete
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64  # grey and RGBA converted to RGB
    again = ImageFolderDataModule(folder, split=(0.6, 0.2, 0.2), seed=1)
    again.setup()
    assert again.parts["test"].keys == dm.parts["test"].keys
    other = ImageFolderDataModule(folder, split=(0.6, 0.2, 0.2), seed=2)
    other.setup()
    assert other.parts["test"].keys != dm.parts["test"].keys


def test_datamodule_grey_channels_and_normalisation(folder: Path):
    dm = ImageFolderDataModule(folder, batch_size=30, split=(0.6, 0.2, 0.2), image_size=8, channels=1,
                               mean=(0.25,), std=(0.5,))
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 1, 8, 8)
    # uniform images: every pixel is (grey/255 - 0.25) / 0.5 with grey the image's PIL luma
    part = dm.parts["test"]
    for i in range(len(part)):
        grey = np.asarray(Image.open(part.items[i]).convert("L"), dtype=np.float64)[0, 0]
        assert torch.allclose(x[i], torch.full_like(x[i], (grey / 255 - 0.25) / 0.5), atol=1e-6)


def test_existing_split_folders_are_used(tmp_path: Path):
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for name in ("a", "b"):
            for i in range(n):
                _img(tmp_path / split / name / f"{i}.jpg", "RGB", 10 * i)
    dm = ImageFolderDataModule(tmp_path, image_size=8)
    dm.setup()
    assert {k: len(v) for k, v in dm.parts.items()} == {"train": 8, "val": 4, "test": 4}
    assert load_target(tmp_path, split="val").classes == ("a", "b")
    target = load_target(tmp_path)
    assert len(target) == 8 and target.sizes == {"train": 8, "val": 4, "test": 4}  # the train folder
    assert all("/train/" in it for it in target.items)
    assert all("/val/" in it for it in target.val.items) and len(load_target(tmp_path, split="val")) == 4


def test_one_line_errors(tmp_path: Path, folder: Path):
    with pytest.raises(TargetError, match=r"does not exist"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match=r"no class sub-folders"):
        scan_image_folder(tmp_path / "empty")
    _img(tmp_path / "one" / "only" / "0.png", "L", 3)
    with pytest.raises(TargetError, match=r"one class only"):
        scan_image_folder(tmp_path / "one")
    (folder / "dog" / "broken.jpg").write_bytes(b"not really a jpeg")
    data = scan_image_folder(folder)
    bad = data.keys.index("dog/broken.jpg")
    with pytest.raises(TargetError, match=r"cannot read image '.*broken\.jpg'") as err:
        data.image(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(TargetError, match=r"unknown target 'nowhere'"):
        load_target("nowhere")
    with pytest.raises(TargetError, match=r"no fixed 'train' part"):
        load_target(folder).train
    with pytest.raises(TargetError, match=r"'train', 'val' or 'test'"):
        load_target(folder).split("holdout")
    with pytest.raises(TargetError, match=r"data.root is not set"):
        ImageFolderDataModule("")
    with pytest.raises(TargetError, match=r"sum to 1"):
        ImageFolderDataModule(folder, split=(0.5, 0.2, 0.2))


def test_max_samples_is_stratified_and_seeded(folder: Path):
    sub = load_target(folder, max_samples=6, seed=0)
    assert torch.bincount(sub.labels).tolist() == [2, 2, 2] and not sub.parts
    assert load_target(folder, max_samples=6, seed=0).keys == sub.keys
    assert len(set(sub.keys) - set(scan_image_folder(folder).keys)) == 0


# -- the Target type --------------------------------------------------------------------------

def test_target_iterates_pairs_subsets_and_digests(folder: Path):
    data = scan_image_folder(folder)
    pairs = list(data)
    assert pairs[0] == (data.items[0], 0) and all(type(y) is int for _, y in pairs)
    sub = data.subset([29, 0])
    assert sub.keys == ["eel/09.png", "cat/00.png"] and sub.labels.tolist() == [2, 0]
    assert sub.digest() != data.subset([0, 29]).digest()  # order is part of the identity
    want = hashlib.sha256("eel/09.png\t2\ncat/00.png\t0\n".encode()).hexdigest()
    assert sub.digest() == want
    ds = sub.dataset(lambda im: torch.tensor(np.asarray(im.convert("L"), dtype=np.float32)))
    x, y = ds[1]
    assert x.shape == (10, 12) and int(y) == 0 and float(x[0, 0]) == 0.0
    assert ds.targets.tolist() == [2, 0]
    with pytest.raises(ValueError, match="one entry per sample"):
        Target(["a", "b"], torch.tensor([0]), ("x",), "t")


def test_open_image_passes_images_through_and_keeps_the_mode(folder: Path):
    im = Image.new("P", (3, 3))
    assert open_image(im) is im
    opened = open_image(str(folder / "cat" / "00.png"))
    assert opened.mode == "L" and opened.size == (12, 10)
    assert open_image(folder / "dog" / "01.png").mode == "RGBA"


# -- the split --------------------------------------------------------------------------------

def _reference_split(labels, counts_of, seed):
    """The protocol written out: per class, permute with default_rng([seed, class]) and deal."""
    y = np.asarray(labels)
    parts = None
    for c in sorted(set(y.tolist())):
        idx = [i for i in range(len(y)) if y[i] == c]
        rng = np.random.default_rng([seed, c])
        perm = [idx[j] for j in rng.permutation(len(idx))]
        counts = counts_of(len(idx))
        parts = parts or [[] for _ in counts]
        start = 0
        for k, n in enumerate(counts):
            parts[k] += perm[start:start + n]
            start += n
    return tuple(sorted(p) for p in parts)


def test_stratified_split_counts_fractions_and_functions():
    y = torch.tensor([i % 4 for i in range(100)])  # 25 per class, interleaved
    frac = stratified_split(y, (0.8, 0.2), seed=0)
    assert sorted(frac[0] + frac[1]) == list(range(100))
    assert torch.bincount(y[frac[1]]).tolist() == [5, 5, 5, 5]
    assert frac == _reference_split(y, lambda n: (round(0.8 * n), n - round(0.8 * n)), 0)
    counts = stratified_split(y, (3, 2, 4), seed=5)
    assert counts == _reference_split(y, lambda n: (3, 2, 4), 5)
    assert [len(p) for p in counts] == [12, 8, 16]
    fn = stratified_split(y, lambda n: (n - 5, 5), seed=1)
    assert fn == _reference_split(y, lambda n: (n - 5, 5), 1)
    # a class's split does not depend on the other classes
    only = stratified_split(y[y == 2], (3, 2, 4), seed=5)
    where = torch.nonzero(y == 2).flatten().tolist()
    assert [[where[i] for i in p] for p in only] == [[i for i in p if y[i] == 2] for p in counts]


def test_usps_train_val_disjoint_indices():
    labels = [i % 10 for i in range(500)]
    tr, va, te = stratified_split(labels, (20, 10, 0), seed=0)
    assert not set(tr) & set(va) and te == []
    assert stratified_split(labels, (20, 10, 0), seed=0) == (tr, va, te)
    assert stratified_split(labels, (20, 10, 0), seed=1) != (tr, va, te)


def test_split_errors():
    with pytest.raises(SplitError, match="sum to 1"):
        stratified_split([0, 1], (0.5, 0.2))
    with pytest.raises(SplitError, match=r"class 1 has 2 samples, fewer than the 2 \+ 1"):
        stratified_split([0, 0, 0, 1, 1], (2, 1))
    with pytest.raises(SplitError, match="≥ 0"):
        stratified_split([0, 1], (2, -1))
    with pytest.raises(SplitError, match="empty"):
        stratified_split([0, 1], ())


# -- the named targets --------------------------------------------------------------------------

@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("office31_webcam", 31), ("mnist_m", 10), ("mnist", 10),
                                          ("usps", 10)])
def test_named_targets(name: str, classes: int):
    data = load_target(name, max_samples=40, seed=0)
    assert len(data) == 40 and len(data.classes) == classes
    im = data.image(0)
    assert isinstance(np.asarray(im), np.ndarray) and im.size[0] >= 16
    assert set(TARGETS) >= set(BENCHMARK_TARGETS) and name in TARGETS


def test_named_target_pools_keep_their_cache_keys(data_root: Path):
    cifar = load_target("cifar10", data_root)
    assert len(cifar) == 3000 and cifar.keys[0].startswith("airplane/") and cifar.name == "cifar10"
    usps = load_target("usps", data_root)
    assert len(usps) == 7291 and usps.keys[:2] == ["usps:0", "usps:1"] and usps.items[0].mode == "L"
    assert load_target("mnist_m", data_root).keys[0].startswith("mnist_m:")
    mnist = load_target("mnist", data_root)
    assert len(mnist) == 10000 and abs(len(mnist.train) - 8000) <= 10 and abs(len(mnist.test) - 1000) <= 10


def _keys(split, part):
    # paths identify file items; USPS items are PIL images: identify them by their pixels
    return [it if isinstance(it, str) else (it.tobytes(), part if part == "test" else "trainfile")
            for it, _ in split.split(part)]


@pytest.mark.parametrize("name", BENCHMARK_TARGETS)
def test_target_split_disjoint_stratified_deterministic(data_root, name):
    a = load_target(name, data_root)
    b = load_target(name, data_root)
    for part in ("train", "val", "test"):
        ka, kb = _keys(a, part), _keys(b, part)
        assert ka == kb, f"{name} {part} is not deterministic"
        assert [y for _, y in a.split(part)] == [y for _, y in b.split(part)]
    if name != "usps":  # file paths: the three parts share no file
        sets = [set(_keys(a, p)) for p in ("train", "val", "test")]
        assert all(len(s) == n for s, n in zip(sets, a.sizes.values())), "duplicate item inside a part"
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # stratified: every class in every part, with the documented per-class counts
    for part in ("train", "val", "test"):
        counts = Counter(y for _, y in a.split(part))
        assert sorted(counts) == list(range(a.num_classes)), f"{name} {part} misses a class"
        if name in PER_CLASS:
            want = PER_CLASS[name][("train", "val", "test").index(part)]
            assert set(counts.values()) == {want}
    if name.startswith("office31"):
        total = Counter(y for p in ("train", "val", "test") for _, y in a.split(p))
        tr = Counter(y for _, y in a.train)
        assert all(abs(tr[c] - 0.5 * total[c]) <= 0.5 for c in total)
        assert abs(len(a.train) / sum(total.values()) - 0.5) < 0.02


# The benchmark's parts as the loader that made bench/results/zoo_groundtruth.csv drew them:
# documented totals, and sha256 of ``relative path (or pixel sha256 for USPS):label;`` per part,
# computed with that loader before the target modules were merged.
FROZEN = {
    "cifar10": ((200, 200, 1000), ("6b038bd828eca365", "82e0a6078425f20e", "a8cb0786ba081843")),
    "office31_webcam": ((400, 116, 279), ("4a9624a2e29d329a", "2a7ed4e0ddb460eb", "b3eb6e6d874c9944")),
    "office31_amazon": ((496, 155, 349), ("9693f1f9a34ac899", "8ce4246ef49edcf4", "1e087cf66053a57a")),
    "mnist_m": ((200, 200, 1000), ("8bc1f08b12f9e6c8", "066f1b175a1e7b62", "ffc588df781adee9")),
    "usps": ((200, 200, 1000), ("fdea9fdeaa44b4fa", "57ee8cb201f8e821", "2cfa2593af0b0891")),
}


@pytest.mark.parametrize("name", BENCHMARK_TARGETS)
def test_benchmark_parts_are_frozen(data_root: Path, name: str):
    sizes, digests = FROZEN[name]
    target = load_target(name, data_root)
    assert tuple(target.sizes.values()) == sizes
    base = os.path.abspath(data_root)
    for part, want in zip(("train", "val", "test"), digests):
        h = hashlib.sha256()
        for it, y in target.split(part):
            key = os.path.relpath(it, base) if isinstance(it, str) else hashlib.sha256(it.tobytes()).hexdigest()
            h.update(f"{key}:{y};".encode())
        assert h.hexdigest()[:16] == want, f"{name} {part}: the benchmark split changed"
    assert load_target(name, data_root, split="test").keys == target.test.keys


def test_per_class_override_and_split_seed(data_root: Path):
    quick = load_target("office31_webcam", data_root, per_class=(2, 1, 1))
    assert quick.sizes == {"train": 62, "val": 31, "test": 31}
    assert "(2, 1, 1)" in quick.description
    other = load_target("cifar10", data_root, per_class=(2, 1, 1), split_seed=1)
    assert other.train.keys != load_target("cifar10", data_root, per_class=(2, 1, 1)).train.keys
