"""DRIVE and CHASE_DB1 loaders (tguide/studies/segmentation/retina.py) on the real files."""

import numpy as np
import pytest
import torch
from PIL import Image

from tguide.studies.segmentation.retina import (IGNORE, SPLITS, EpochSampler, RetinaDataModule, RetinaPatches, downscale_pair,
                                load_retina, pad_to_multiple)
from tguide.data.roots import data_root
from tguide.errors import DataNotFoundError


def test_splits_are_fixed_and_disjoint():
    for name, counts in (("drive", (16, 4, 20)), ("chasedb1", (16, 4, 8))):
        s = SPLITS[name]
        assert (len(s["train"]), len(s["val"]), len(s["test"])) == counts
        assert not set(s["train"]) & set(s["val"]) and not set(s["test"]) & (set(s["train"]) | set(s["val"]))
    assert SPLITS["drive"]["test"][0] == "01" and SPLITS["drive"]["val"] == ["37", "38", "39", "40"]
    assert SPLITS["chasedb1"]["val"] == ["09L", "09R", "10L", "10R"] and SPLITS["chasedb1"]["test"][-1] == "14R"


@pytest.mark.parametrize("name, split, n, hw", [("drive", "val", 4, (292, 282)), ("drive", "test", 20, (292, 282)),
                                                ("chasedb1", "val", 4, (480, 499))])
def test_half_resolution_counts_shapes_ranges(name, split, n, hw):
    pairs = load_retina(name, split, downscale=2)
    assert len(pairs) == n
    for image, label in pairs:
        assert image.shape == (3, *hw) and image.dtype == torch.float32 and label.shape == hw
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert set(torch.unique(label).tolist()) == {0, 1, IGNORE}
        fov = label != IGNORE
        assert 0.6 < float(fov.float().mean()) < 0.8  # the circular field of view
        assert 0.05 < float((label == 1).sum() / fov.sum()) < 0.25  # vessels are ~8-16% of the FOV


def test_drive_full_resolution_matches_files():
    image, label = load_retina("drive", "val", downscale=1)[0]  # id 37
    folder = data_root() / "seg" / "DRIVE" / "training"
    rgb = np.array(Image.open(folder / "images" / "37_training.tif"))
    fov = np.array(Image.open(folder / "mask" / "37_training_mask.gif")) > 0
    ves = np.array(Image.open(folder / "1st_manual" / "37_manual1.gif")) > 0
    assert image.shape == (3, 584, 565)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy() * 255, rgb, atol=1e-3)
    lab = label.numpy()
    assert ((lab == IGNORE) == ~fov).all()
    assert ((lab == 1) == (ves & fov)).all()


def test_chase_fov_is_the_red_channel_threshold():
    image, label = load_retina("chasedb1", "test", downscale=1)[0]  # 11L
    folder = data_root() / "seg" / "CHASEDB1"
    rgb = np.array(Image.open(folder / "Image_11L.jpg"))
    ves = np.array(Image.open(folder / "Image_11L_1stHO.png")) > 0
    fov = rgb[..., 0] > 20
    assert label.shape == (960, 999)
    assert ((label.numpy() == IGNORE) == ~fov).all()
    assert ((label.numpy() == 1) == (ves & fov)).all()
    assert (ves & ~fov).sum() < 0.005 * ves.sum()  # the derived FOV keeps > 99.5% of the vessels


def test_downscale_is_block_average():
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.random((3, 7, 9)), dtype=torch.float32)
    lab = torch.as_tensor(rng.integers(0, 2, (7, 9)))
    lab[0, :] = IGNORE
    small_img, small_lab = downscale_pair(img, lab, 2)
    assert small_img.shape == (3, 3, 4) and small_lab.shape == (3, 4)
    blocks = img[:, :6, :8].reshape(3, 3, 2, 4, 2).mean(dim=(2, 4))
    torch.testing.assert_close(small_img, blocks)
    l = lab[:6, :8].numpy().reshape(3, 2, 4, 2)
    fov = (l != IGNORE).mean(axis=(1, 3)) >= 0.5
    ves = (l == 1).mean(axis=(1, 3)) >= 0.5
    expect = np.where(fov, ves.astype(np.int64), IGNORE)
    np.testing.assert_array_equal(small_lab.numpy(), expect)
    with pytest.raises(ValueError, match="downscale"):
        downscale_pair(img, lab, 0)


def test_pad_to_multiple():
    img, lab = torch.ones(3, 30, 33), torch.zeros(30, 33, dtype=torch.int64)
    pi, pl = pad_to_multiple(img, lab, 32)
    assert pi.shape == (3, 32, 64) and pl.shape == (32, 64)
    assert (pl[30:] == IGNORE).all() and (pl[:, 33:] == IGNORE).all() and (pl[:30, :33] == 0).all()
    assert float(pi[:, 30:].abs().sum()) == 0.0


def test_patches_are_deterministic_and_centred_in_the_fov():
    pairs = load_retina("drive", "val", downscale=2)
    ds = RetinaPatches(pairs, patch_size=48, length=10, seed=1)
    x, y = ds[3]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48)
    x2, y2 = ds[3]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(ds[13][0], x)  # the next epoch's index gives another crop
    for i in range(10):
        _, yi = ds[i]
        assert (yi[23:25, 23:25] != IGNORE).any()  # the centre pixel (before a flip) is in the FOV
    sampler = EpochSampler(4)
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11] and len(sampler) == 4


def test_datamodule_loaders():
    dm = RetinaDataModule("drive", downscale=2, patch_size=64, patches_per_epoch=16, batch_size=4,
                          eval_batch_size=2, train_ids=["21", "22"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 64, 64) and y.dtype == torch.int64
    assert len(dm.train_set.pairs) == 2
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (2, 3, 320, 288) and yv.shape == (2, 320, 288)  # padded to multiples of 32
    assert len(dm.test_dataloader().dataset) == 20 and len(dm.train_images_dataloader().dataset) == 2
    with pytest.raises(ValueError, match="train_ids"):
        RetinaDataModule("drive", train_ids=["01"])
    with pytest.raises(ValueError, match="dataset"):
        RetinaDataModule("stare")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="seg/DRIVE"):
        load_retina("drive", "val", root=str(tmp_path), downscale=2)
