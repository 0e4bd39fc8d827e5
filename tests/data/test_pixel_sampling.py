"""Pixel sampling (uniform vs boundary band) on real DRIVE / CHASE_DB1 labels."""

import pytest
import torch
from torch import nn

from tguide.studies.segmentation.retina import IGNORE, load_retina
from tguide.pixel_features import boundary_band, extract_pixel_features


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
    fs = extract_pixel_features(Coordinates(), loader, "body", pixels_per_image=300, ignore_index=IGNORE,
                                sampling=sampling, band=band, seed=0)
    return pairs, fs


def test_boundary_pixels_lie_in_the_band_of_real_vessels():
    for name in ("drive", "chasedb1"):
        pairs, fs = sample(name, "boundary", band=2)
        for i, (_, label) in enumerate(pairs):
            rc = fs.features["body"][fs.ids == i].long()
            assert rc.shape == (300, 2)
            band = boundary_band(label, 2, ignore_index=IGNORE)
            assert band[rc[:, 0], rc[:, 1]].all()  # only pixels within 2 px of a vessel edge
            labels = label[rc[:, 0], rc[:, 1]]
            assert torch.equal(labels, fs.labels[fs.ids == i]) and (labels != IGNORE).all()
            assert set(labels.tolist()) == {0, 1}  # both classes


def test_boundary_sampling_balances_the_classes():
    _, uni = sample("drive", "uniform")
    _, bnd = sample("drive", "boundary")
    assert (uni.labels != IGNORE).all()  # never outside the field of view
    frac_u, frac_b = uni.labels.float().mean(), bnd.labels.float().mean()
    assert frac_u < 0.25  # vessels are a minority of the FOV
    assert frac_b > 1.4 * frac_u  # the band is richer in vessel pixels (≈0.25 vs ≈0.15 at band 3)
