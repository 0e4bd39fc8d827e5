"""Input transforms: mode conversion, MNIST-style padding, resize policies and normalisation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tguide.data.transforms import ConvertMode, InputSpec, PadResize, input_transform, plain_transform
from tguide.errors import TGuideError


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int64)


# -- ConvertMode ----------------------------------------------------------------------------------

def test_convert_rgb_to_grey_is_itu_601_luma():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50]]], dtype=np.uint8)
    out = ConvertMode("L")(Image.fromarray(rgb, "RGB"))
    want = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert out.mode == "L" and np.abs(_pixels(out) - want).max() <= 1


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "P"])
def test_convert_every_mode_to_rgb_and_grey(mode: str):
    values = np.array([[0, 255, 0], [255, 0, 255]], dtype=np.uint8)
    if mode == "1":
        im = Image.fromarray(values > 0)  # mode "1"
        rgb_want = np.repeat(values[..., None], 3, axis=2)
    elif mode == "L":
        im = Image.fromarray(values, "L")
        rgb_want = np.repeat(values[..., None], 3, axis=2)
    elif mode == "RGB":
        rgb_want = np.stack([values, 255 - values, values // 2], axis=2)
        im = Image.fromarray(rgb_want, "RGB")
    elif mode == "RGBA":
        rgb_want = np.stack([values, 255 - values, values // 2], axis=2)
        alpha = np.full(values.shape, 7, dtype=np.uint8)  # nearly transparent: alpha is dropped, not composited
        im = Image.fromarray(np.concatenate([rgb_want, alpha[..., None]], axis=2), "RGBA")
    else:
        im = Image.fromarray((values > 0).astype(np.uint8), "P")
        im.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
        table = np.array([[10, 20, 30], [200, 150, 100]], dtype=np.uint8)
        rgb_want = table[(values > 0).astype(int)]
    rgb = ConvertMode("RGB")(im)
    assert rgb.mode == "RGB" and rgb.size == im.size
    assert (_pixels(rgb) == rgb_want).all()
    grey = ConvertMode("L")(im)
    assert grey.mode == "L"
    luma = rgb_want.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(_pixels(grey) - luma).max() <= 1


def test_convert_passes_through_and_pickles():
    im = Image.new("RGB", (2, 2))
    assert ConvertMode("RGB")(im) is im
    conv = pickle.loads(pickle.dumps(ConvertMode("L")))
    assert repr(conv) == "ConvertMode('L')" and conv(im).mode == "L"
    with pytest.raises(TGuideError, match="'L' or 'RGB'"):
        ConvertMode("CMYK")


# -- PadResize ------------------------------------------------------------------------------------

def _box(arr: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(arr)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("w,h,inner,size", [(16, 16, 20, 28), (30, 10, 20, 28), (5, 40, 20, 28), (7, 3, 9, 9)])
def test_pad_resize_geometry(w: int, h: int, inner: int, size: int):
    out = PadResize(inner, size)(Image.new("L", (w, h), 255))
    assert out.mode == "L" and out.size == (size, size)
    # independent, in exact rationals: the longer side becomes `inner`, the other keeps the aspect
    # ratio (rounded half to even: 5 x 40 -> 2.5 -> 2 x 20), centred
    from fractions import Fraction

    nw, nh = (max(1, round(Fraction(side * inner, max(w, h)))) for side in (w, h))
    left, top = (size - nw) // 2, (size - nh) // 2
    assert _box(_pixels(out)) == (left, top, left + nw, top + nh)
    assert (_pixels(out)[top:top + nh, left:left + nw] == 255).all()  # a uniform image stays uniform inside


def test_pad_resize_mnist_layout_and_rgb():
    out = PadResize(20, 28)(Image.new("RGB", (16, 16), (255, 128, 0)))
    arr = _pixels(out)
    assert out.mode == "RGB" and (arr[4:24, 4:24] == [255, 128, 0]).all()
    assert arr[:4].sum() == 0 and arr[24:].sum() == 0 and arr[:, :4].sum() == 0 and arr[:, 24:].sum() == 0
    assert repr(PadResize(20, 28)) == "PadResize(inner=20, size=28)"
    with pytest.raises(TGuideError, match="inner <= size"):
        PadResize(30, 28)


# -- input_transform ------------------------------------------------------------------------------

def test_stretch_normalises_per_channel():
    spec = InputSpec(12, 3, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0), "stretch")
    x = input_transform(spec)(Image.new("RGB", (40, 20), (255, 51, 102)))
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32
    want = [(1.0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, (0.4 - 0.0) / 2.0]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((12, 12), want[c]), atol=1e-6)


def test_crop_takes_the_centre_of_the_resized_image():
    # three vertical stripes (red | green | blue) on a 90 x 45 image; shorter side 45 -> 64
    # (size 32, crop_pct 0.5), width 128; the centre 32 columns (48..80 of 128) lie inside green
    arr = np.zeros((45, 90, 3), dtype=np.uint8)
    arr[:, :30, 0], arr[:, 30:60, 1], arr[:, 60:, 2] = 255, 255, 255
    spec = InputSpec(32, 3, (0.0,) * 3, (1.0,) * 3, "crop", crop_pct=0.5)
    x = input_transform(spec)(Image.fromarray(arr))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[1], torch.ones(32, 32), atol=1e-6) and x[0].abs().max() < 1e-6 and x[2].abs().max() < 1e-6
    assert "Resize(size=64" in repr(input_transform(spec)) and "CenterCrop(size=(32, 32))" in repr(input_transform(spec))


def test_pad_grey_and_policy_override():
    spec = InputSpec(28, 1, (0.0,), (1.0,), "pad", inner=20)
    x = input_transform(spec)(Image.new("RGB", (32, 16), (255, 255, 255)))  # RGB in, grey out
    assert x.shape == (1, 28, 28)
    ys, xs = torch.nonzero(x[0] > 0.5, as_tuple=True)
    assert (int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1) == (4, 24, 9, 19)
    assert float(x.max()) == pytest.approx(1.0) and float(x[0, 0, 0]) == 0.0
    stretched = input_transform(spec, "stretch")(Image.new("L", (32, 16), 255))
    assert stretched.shape == (1, 28, 28) and bool((stretched > 0.99).all())
    with pytest.raises(TGuideError, match="resize must be one of"):
        input_transform(spec, "squash")


def test_transform_repr_names_every_step_and_survives_pickling():
    spec = InputSpec(28, 1, (0.1,), (0.3,), "pad", inner=20)
    t = input_transform(spec)
    text = repr(t)
    assert text.index("ConvertMode('L')") < text.index("PadResize(inner=20, size=28)") < text.index("Normalize")
    again = pickle.loads(pickle.dumps(t))
    im = Image.new("P", (10, 20))
    assert repr(again) == text and torch.equal(again(im), t(im))


def test_plain_transform_uses_the_imagenet_crop_ratio():
    t = plain_transform(3, 256, (0.5,) * 3, (0.5,) * 3, crop=True)
    assert "Resize(size=292" in repr(t)  # int(256 * 256 / 224) = 292
    assert t(Image.new("L", (300, 400), 255)).shape == (3, 256, 256)
    s = plain_transform(1, 20, (0.0,), (1.0,))
    assert s(Image.new("RGB", (7, 9))).shape == (1, 20, 20) and "Resize(size=(20, 20)" in repr(s)


def test_input_spec_rejects_bad_values():
    with pytest.raises(TGuideError, match="channels must be 1 or 3"):
        InputSpec(28, 2, (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(TGuideError, match="one value per channel"):
        InputSpec(28, 3, (0.0,), (1.0,))
    with pytest.raises(TGuideError, match="crop_pct"):
        InputSpec(28, 1, (0.0,), (1.0,), "crop", crop_pct=1.5)
    with pytest.raises(TGuideError, match="resize must be one of"):
        InputSpec(28, 1, (0.0,), (1.0,), "zoom")
