"""Per-pixel features for segmentation: resampled maps, the seeded draw, boundary-band sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.features.pixels import boundary_band, extract_pixel_features
from tguide.studies.segmentation.retina import IGNORE as RETINA_IGNORE
from tguide.studies.segmentation.retina import load_retina


class _Seg(nn.Module):
    """Tiny encoder: full-resolution conv, then a stride-2 conv (half resolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = nn.Conv2d(1, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 5, 3, stride=2, padding=1)

    def forward(self, x):
        return self.down(torch.relu(self.full(x)))


def test_pixel_features_match_upsampled_maps():
    torch.manual_seed(0)
    model = _Seg()
    x = torch.randn(3, 1, 12, 10)
    masks = torch.randint(0, 3, (3, 1, 12, 10))
    masks[:, :, :2] = 255  # ignored band
    loader = DataLoader(TensorDataset(x, masks), batch_size=2)
    fs = extract_pixel_features(model, loader, ["full", "down"], pixels_per_image=20, ignore_index=255, seed=3)
    assert fs.features["full"].shape == (60, 3) and fs.features["down"].shape == (60, 5)
    assert not bool((fs.labels == 255).any())
    np.testing.assert_array_equal(np.bincount(fs.ids.numpy()), [20, 20, 20])
    # independent path: full maps, upsampled by F.interpolate, then find every row's pixel
    with torch.no_grad():
        full = model.full(x)
        down = F.interpolate(model.down(torch.relu(full)), size=(12, 10), mode="bilinear", align_corners=False)
    for i in range(3):
        rows = fs.features["full"][fs.ids == i].numpy()
        lab = fs.labels[fs.ids == i].numpy()
        table = full[i].reshape(3, -1).T.numpy()  # (H*W, 3)
        pos = [int(np.argmin(np.abs(table - r).sum(1))) for r in rows]
        assert len(set(pos)) == 20 and all(p >= 2 * 10 for p in pos)  # distinct, none in the ignored band
        np.testing.assert_allclose(rows, table[pos], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(lab, masks[i, 0].flatten().numpy()[pos])
        np.testing.assert_allclose(fs.features["down"][fs.ids == i].numpy(),
                                   down[i].reshape(5, -1).T.numpy()[pos], rtol=1e-5, atol=1e-6)


def test_pixel_draw_independent_of_batching():
    torch.manual_seed(0)
    model = _Seg()
    x, masks = torch.randn(5, 1, 8, 8), torch.randint(0, 2, (5, 8, 8)).float()
    a = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=5), ["down"], pixels_per_image=7)
    b = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["down"], pixels_per_image=7)
    torch.testing.assert_close(a.features["down"], b.features["down"])
    torch.testing.assert_close(a.labels, b.labels)
    c = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["down"],
                               pixels_per_image=7, seed=1)
    assert not torch.equal(a.features["down"], c.features["down"])
    every = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["full"],
                                   pixels_per_image=None, max_samples=2)
    assert every.features["full"].shape == (2 * 64, 3)
    with pytest.raises(ValueError, match=r"pixel features need label masks"):
        extract_pixel_features(model, DataLoader(TensorDataset(x, torch.zeros(5)), batch_size=2), ["full"])
    with pytest.raises(ValueError, match=r"non-integer values"):
        extract_pixel_features(model, DataLoader(TensorDataset(x, masks + 0.5), batch_size=2), ["full"])


# -- boundary-band sampling (Tan et al., CVPR 2021: sample pixels near boundaries) -------------

IGNORE = 255


def brute_band(mask: np.ndarray, band: int, ignore: int | None) -> np.ndarray:
    """Independent reference: loop over pixels, look at the (2b+1)² square of labelled neighbours."""
    h, w = mask.shape
    out = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            if ignore is not None and mask[i, j] == ignore:
                continue
            win = mask[max(0, i - band):i + band + 1, max(0, j - band):j + band + 1].ravel()
            if ignore is not None:
                win = win[win != ignore]
            out[i, j] = len(set(win.tolist())) >= 2
    return out


def random_mask(seed: int, h: int = 23, w: int = 31) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = (rng.random((h, w)) < 0.15).astype(np.int64)
    m[rng.random((h, w)) < 0.1] = 2  # a third class
    m[:, :3] = IGNORE  # an ignored strip (like outside the field of view)
    return m


@pytest.mark.parametrize("band", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_band_matches_brute_force(band, seed):
    m = random_mask(seed)
    got = boundary_band(torch.as_tensor(m), band, ignore_index=IGNORE).numpy()
    np.testing.assert_array_equal(got, brute_band(m, band, IGNORE))


def test_band_of_a_line_has_both_classes_and_its_width():
    m = torch.zeros(21, 21, dtype=torch.int64)
    m[:, 10] = 1  # a one-pixel vertical "vessel"
    got = boundary_band(m, 3)
    cols = torch.nonzero(got.any(0)).flatten().tolist()
    assert cols == list(range(7, 14))  # 3 pixels each side of the vessel plus the vessel
    assert set(m[got].tolist()) == {0, 1}
    assert boundary_band(torch.zeros(5, 5, dtype=torch.int64), 2).sum() == 0  # one class: no boundary
    # the border with ignored pixels is not a boundary
    m2 = torch.zeros(9, 9, dtype=torch.int64)
    m2[:, :4] = IGNORE
    assert boundary_band(m2, 2, ignore_index=IGNORE).sum() == 0


def test_band_rejects_bad_input():
    with pytest.raises(ValueError, match="band"):
        boundary_band(torch.zeros(4, 4, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        boundary_band(torch.zeros(1, 4, 4, dtype=torch.int64), 1)


class Identity(nn.Module):
    """Feature map = the input image itself, so a row's features tell where it was sampled."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()

    def forward(self, x):
        return self.body(x)


def coord_images(masks: torch.Tensor) -> torch.Tensor:
    b, h, w = masks.shape
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([rows, cols])[None].expand(b, 2, h, w).clone()  # (B, 2, H, W)


def test_boundary_sampling_draws_only_band_pixels_of_both_classes():
    masks = torch.as_tensor(np.stack([random_mask(s) for s in range(3)])) % 256
    masks[masks == 2] = 0  # binary vessel-like masks with an ignored strip
    x = coord_images(masks)
    loader = [(x, masks)]
    fs = extract_pixel_features(Identity(), loader, "body", pixels_per_image=40, ignore_index=IGNORE,
                                sampling="boundary", band=1, seed=3)
    assert fs.features["body"].shape == (3 * 40, 2)
    for img in range(3):
        band = brute_band(masks[img].numpy(), 1, IGNORE)
        rc = fs.features["body"][fs.ids == img].long()
        assert band[rc[:, 0], rc[:, 1]].all()  # every sampled pixel lies in the band
        assert set(fs.labels[fs.ids == img].tolist()) == {0, 1}  # both classes present
        assert torch.equal(fs.labels[fs.ids == img], masks[img][rc[:, 0], rc[:, 1]])
    uni = extract_pixel_features(Identity(), loader, "body", pixels_per_image=40, ignore_index=IGNORE, seed=3)
    default = extract_pixel_features(Identity(), loader, "body", pixels_per_image=40, ignore_index=IGNORE,
                                     seed=3, sampling="uniform", band=5)
    assert torch.equal(uni.features["body"], default.features["body"])  # band is unused by uniform sampling
    in_band = [brute_band(masks[int(i)].numpy(), 1, IGNORE)[int(r), int(c)]
               for i, (r, c) in zip(uni.ids, uni.features["body"].long())]
    assert not all(in_band)  # uniform sampling also reaches pixels away from the boundaries


def test_boundary_sampling_errors():
    masks = torch.zeros(1, 8, 8, dtype=torch.int64)
    x = coord_images(masks)
    with pytest.raises(ValueError, match="two classes"):
        extract_pixel_features(Identity(), [(x, masks)], "body", sampling="boundary")
    with pytest.raises(ValueError, match="sampling"):
        extract_pixel_features(Identity(), [(x, masks)], "body", sampling="edges")
    with pytest.raises(ValueError, match="band"):
        extract_pixel_features(Identity(), [(x, masks)], "body", sampling="boundary", band=0)


# -- on real DRIVE / CHASE_DB1 labels ----------------------------------------------------------

class Coordinates(nn.Module):
    """Returns a (B, 2, H, W) map of each pixel's (row, col), so a row's features say where it was sampled."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()

    def forward(self, x):
        b, _, h, w = x.shape
        rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        return self.body(torch.stack([rows, cols])[None].expand(b, 2, h, w))


def sample(name: str, sampling: str, band: int = 3):
    pairs = load_retina(name, "val", downscale=2)[:2]
    loader = [(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))]
    fs = extract_pixel_features(Coordinates(), loader, "body", pixels_per_image=300, ignore_index=RETINA_IGNORE,
                                sampling=sampling, band=band, seed=0)
    return pairs, fs


def test_boundary_pixels_lie_in_the_band_of_real_vessels():
    for name in ("drive", "chasedb1"):
        pairs, fs = sample(name, "boundary", band=2)
        for i, (_, label) in enumerate(pairs):
            rc = fs.features["body"][fs.ids == i].long()
            assert rc.shape == (300, 2)
            band = boundary_band(label, 2, ignore_index=RETINA_IGNORE)
            assert band[rc[:, 0], rc[:, 1]].all()  # only pixels within 2 px of a vessel edge
            labels = label[rc[:, 0], rc[:, 1]]
            assert torch.equal(labels, fs.labels[fs.ids == i]) and (labels != RETINA_IGNORE).all()
            assert set(labels.tolist()) == {0, 1}  # both classes


def test_boundary_sampling_balances_the_classes():
    _, uni = sample("drive", "uniform")
    _, bnd = sample("drive", "boundary")
    assert (uni.labels != RETINA_IGNORE).all()  # never outside the field of view
    frac_u, frac_b = uni.labels.float().mean(), bnd.labels.float().mean()
    assert frac_u < 0.25  # vessels are a minority of the FOV
    assert frac_b > 1.4 * frac_u  # the band is richer in vessel pixels (≈0.25 vs ≈0.15 at band 3)
