import numpy as np
import pytest
import torch
from PIL import Image

from tguide.studies.denoising.data import (DenoiseDataModule, NoisyImages, RandomPatches, center_crop, load_images,
                                 train_val_split)
from tguide.studies.denoising.noise import parse_noise
from tguide.errors import DataNotFoundError, TGuideError


def test_sets_load_grey_in_unit_range(data_root):
    set12 = load_images("Set12", data_root)
    assert len(set12) == 12 and all(x.shape[0] == 1 and x.dtype == torch.float32 for x in set12)
    assert {tuple(x.shape[-2:]) for x in set12} <= {(256, 256), (512, 512)}
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 for x in set12)
    assert len(load_images("Train400", data_root)) == 400 and len(load_images("BSD68", data_root)) == 68


def test_kodak_grey_is_itu601_luma_of_rgb(data_root):
    rgb = load_images("Kodak24", data_root, grey=False)
    grey = load_images("Kodak24", data_root, grey=True)
    assert len(rgb) == 24 and rgb[0].shape == (3, 500, 500) and grey[0].shape == (1, 500, 500)
    with Image.open(sorted((data_root / "denoise" / "Kodak24").glob("*.png"))[0]) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    luma = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]) / 255
    assert np.abs(grey[0][0].numpy() - luma).max() <= 1.01 / 255


def test_train_val_split_is_disjoint_and_deterministic():
    train, val = train_val_split(400)
    assert len(train) == 380 and len(val) == 20 and not set(train) & set(val)
    assert val[:2] == [19, 39] and sorted(train + val) == list(range(400))


def test_random_patches_pairs_and_seeding():
    images = [torch.rand(1, 40, 50, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ds = RandomPatches(images, parse_noise("gaussian:25"), "n2n", patch=16, length=10, seed=1)
    x, y, c = ds[0]
    assert x.shape == y.shape == c.shape == (1, 16, 16)
    assert not torch.equal(x, y)
    assert float((x - c).std()) == pytest.approx(25 / 255, rel=0.3)
    again = RandomPatches(images, parse_noise("gaussian:25"), "n2n", patch=16, length=10, seed=1)
    assert torch.equal(again[0][0], x)
    n2c = RandomPatches(images, parse_noise("gaussian:25"), "n2c", patch=16, length=10, seed=1)
    x2, y2, c2 = n2c[0]
    assert torch.equal(y2, c2)
    with pytest.raises(TGuideError, match="larger than"):
        RandomPatches(images, parse_noise("gaussian:25"), patch=64)


def test_noisy_images_are_fixed_per_index():
    images = [torch.rand(1, 20, 20) for _ in range(3)]
    ds = NoisyImages(images, parse_noise("poisson:30"), seed=4)
    assert torch.equal(ds[1][0], ds[1][0]) and not torch.equal(ds[1][0], ds[2][0])
    assert torch.equal(ds[2][1], images[2])


def test_datamodule_loaders(data_root):
    dm = DenoiseDataModule(noise="impulse:0.2", batch_size=4, patch_size=32, patches_per_epoch=8,
                           test_sets=["Set12", "BSD68"], max_eval_images=2)
    dm.setup("fit")
    x, y, c = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 32, 32) and not torch.equal(x, y)
    v = next(iter(dm.val_dataloader()))
    assert v[0].shape == (1, 1, 180, 180) and torch.equal(v[1], v[2])
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 2 and len(loaders[0].dataset) == 2
    assert next(iter(loaders[1]))[0].shape[-2:] in {(321, 481), (481, 321)}
    with pytest.raises(TGuideError, match="unknown"):
        DenoiseDataModule(test_sets=["Urban100"])


def test_missing_data_root_is_clear(tmp_path):
    with pytest.raises(DataNotFoundError, match="denoise"):
        load_images("Set12", tmp_path)
    assert center_crop([torch.zeros(1, 10, 12)], 8).shape == (1, 1, 8, 8)
