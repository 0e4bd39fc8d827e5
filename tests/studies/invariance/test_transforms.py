"""Nuisance families: identity at t = 0, the right geometry, seeded per-example sampling."""

import math

import pytest
import torch

from tguide.studies.invariance.transforms import (FAMILIES, apply_transform, background, dilate, family, random_transform,
                                    rescale, rotate, sample_params)


def _bar(h: int = 28) -> torch.Tensor:
    x = torch.zeros(1, 1, h, h)
    x[0, 0, 13:15, 6:22] = 1.0  # a horizontal bar through the centre
    return x


@pytest.mark.parametrize("name", list(FAMILIES))
def test_zero_parameter_is_identity(name):
    x = torch.rand(3, 1, 28, 28)
    if name == "background":
        x = x * 0.5
    torch.testing.assert_close(apply_transform(name, x, torch.zeros(3)), x, atol=1e-5, rtol=0)


def test_rotation_by_90_turns_a_bar_vertical_and_matches_rot90():
    x = _bar()
    r = rotate(x, torch.tensor([90.0]))
    rows, cols = torch.nonzero(r[0, 0] > 0.5, as_tuple=True)
    assert (rows.max() - rows.min()) > 10 and (cols.max() - cols.min()) <= 2
    # a 90° turn of a pixel grid is exact: compare with torch.rot90 (counter-clockwise)
    torch.testing.assert_close(r, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4, rtol=0)


def test_scale_changes_the_bar_length():
    x = _bar()
    longer = rescale(x, torch.tensor([math.log(1.5)]))
    shorter = rescale(x, torch.tensor([math.log(0.5)]))
    length = lambda v: int((v[0, 0].amax(0) > 0.3).sum())  # noqa: E731
    assert length(longer) > length(x) > length(shorter)
    assert length(longer) == pytest.approx(1.5 * length(x), abs=2)


def test_background_lifts_background_keeps_ink_and_inverts():
    x = _bar()
    y = background(x, torch.tensor([0.4]))
    assert float(y[0, 0, 0, 0]) == pytest.approx(0.4) and float(y[0, 0, 13, 10]) == pytest.approx(1.0)
    torch.testing.assert_close(background(y, torch.tensor([-0.4])), x, atol=1e-6, rtol=0)


def test_dilation_grows_erosion_shrinks_and_fraction_interpolates():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:18, 10:18] = 1.0  # 8×8 square
    assert int(dilate(x, 1.0).sum()) == 10 * 10
    assert int(dilate(x, -1.0).sum()) == 6 * 6
    torch.testing.assert_close(dilate(x, 0.25), 0.75 * x + 0.25 * dilate(x, 1.0))
    t = torch.tensor([0.5], requires_grad=True)
    dilate(x, t).sum().backward()
    assert float(t.grad) == pytest.approx(100 - 64)


def test_per_example_parameters_and_gradients():
    x = torch.rand(4, 1, 28, 28)
    t = torch.tensor([0.0, 30.0, -30.0, 60.0], requires_grad=True)
    out = rotate(x, t)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:2], rotate(x[1:2], 30.0))
    out.sum().backward()
    assert t.grad is not None and bool(torch.isfinite(t.grad).all())


def test_sampling_is_seeded_per_example_and_in_range():
    a = sample_params("rotation", 1000, torch.Generator().manual_seed(5))
    b = sample_params("rotation", 1000, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert float(a.min()) >= -90 and float(a.max()) <= 90 and float(a.std()) > 40  # U(-90, 90): std 52
    d = sample_params("dilation", 600, torch.Generator().manual_seed(0))
    assert set(d.tolist()) == {-1.0, 0.0, 1.0}
    x = torch.rand(5, 1, 28, 28)
    out, t = random_transform(family("scale", -0.2, 0.2), x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and t.shape == (5,) and float(t.abs().max()) <= 0.2
    assert len(set(t.tolist())) == 5


def test_bad_input():
    with pytest.raises(ValueError, match="unknown nuisance family"):
        family("shear")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        rotate(torch.rand(28, 28), 10.0)
    with pytest.raises(ValueError, match="one parameter per image"):
        rotate(torch.rand(2, 1, 28, 28), torch.zeros(3))
    with pytest.raises(ValueError, match="high > low"):
        family("rotation", 10, -10)
