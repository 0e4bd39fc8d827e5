"""Boundary-band pixel sampling in tguide.features (Tan et al., CVPR 2021: sample pixels near boundaries)."""

import numpy as np
import pytest
import torch
from torch import nn

from tguide.pixel_features import boundary_band, extract_pixel_features


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
