import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tguide.metrics.denoising import (denoiser_residuals, denoising_transferability, residual_distance,
                                      residual_patches, score_denoiser)


def noise(sigma, n=24, size=64, seed=0):
    return sigma * torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_residuals_score_one_and_same_distribution_subsets_near_one():
    r = noise(0.1)
    assert float(denoising_transferability(r, r.clone(), max_patches=None)) == pytest.approx(1.0, abs=1e-9)
    a, b = noise(0.1, n=24, size=128, seed=1), noise(0.1, n=24, size=128, seed=2)
    assert float(denoising_transferability(a, b)) >= 0.95


@pytest.mark.parametrize("sigma_b", [0.05, 0.15, 0.2, 0.3])
def test_gaussian_closed_form(sigma_b):
    # every projection of an iid N(0, s²) patch is N(0, s²): SW2 = |s_B - s_A|, T = exp(-|s_B - s_A| / s_A)
    a, b = noise(0.1, seed=1), noise(sigma_b, seed=2)
    res = denoising_transferability(a, b, return_result=True)
    assert float(res.distance) == pytest.approx(abs(sigma_b - 0.1), abs=0.004)
    assert float(res.scale) == pytest.approx(0.1, rel=0.01)
    assert float(res.score) == pytest.approx(math.exp(-abs(sigma_b - 0.1) / 0.1), abs=0.03)


def test_ordering_with_sigma_and_asymmetry():
    a = noise(0.1, n=12, seed=1)
    scores = [float(denoising_transferability(a, noise(s, n=12, seed=2), n_projections=32))
              for s in (0.1, 0.15, 0.2, 0.3, 0.5)]
    assert all(x > y for x, y in zip(scores, scores[1:]))
    ab = float(denoising_transferability(noise(0.1, seed=1), noise(0.2, seed=2)))
    ba = float(denoising_transferability(noise(0.2, seed=1), noise(0.1, seed=2)))
    assert ab == pytest.approx(math.exp(-1), abs=0.03) and ba == pytest.approx(math.exp(-0.5), abs=0.03)


def test_scale_invariance_and_spatial_structure_is_seen():
    a, b = noise(0.1, n=8, seed=1), noise(0.15, n=8, seed=2)
    t = float(denoising_transferability(a, b, n_projections=32))
    assert float(denoising_transferability(7 * a, 7 * b, n_projections=32)) == pytest.approx(t, abs=1e-9)
    # same per-pixel distribution, but B's noise is spatially correlated (2x2 blocks): patches see it
    blocky = torch.nn.functional.interpolate(noise(0.1, n=12, size=32, seed=3), scale_factor=2, mode="nearest")
    white = noise(0.1, n=12, seed=4)
    assert float(denoising_transferability(white, blocky, method="pixel")) > 0.95
    assert float(denoising_transferability(white, blocky)) < 0.85


def test_pixel_method_matches_sorted_quantile_formula():
    a, b = noise(0.1, n=4, size=32, seed=1), torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    d = residual_distance(a, b, method="pixel", max_patches=None)
    ref = math.sqrt(float(np.mean((np.sort(a.numpy().ravel()) - np.sort(b.numpy().ravel())) ** 2)))
    assert float(d) == pytest.approx(ref, rel=1e-6)


def test_residual_patches_layout():
    r = torch.arange(2 * 3 * 16 * 17, dtype=torch.float64).reshape(2, 3, 16, 17)
    p = residual_patches(r, 8)
    assert p.shape == (2 * 2 * 2, 3 * 64)                   # the 17th column is dropped
    assert torch.equal(p[0], r[0, :, :8, :8].reshape(-1))
    assert torch.equal(p[1], r[0, :, :8, 8:16].reshape(-1))
    assert torch.equal(p[4], r[1, :, :8, :8].reshape(-1))


@settings(max_examples=15, deadline=None)
@given(st.floats(0.01, 10), st.floats(0.01, 10), st.sampled_from(["gauss", "laplace", "impulse"]))
def test_range_is_zero_to_one(sa, sb, kind):
    g = torch.Generator().manual_seed(0)
    a = sa * torch.randn(4, 1, 16, 16, generator=g)
    b = {"gauss": sb * torch.randn(4, 1, 16, 16, generator=g),
         "laplace": sb * torch.distributions.Laplace(0, 1).sample((4, 1, 16, 16)),
         "impulse": sb * (torch.rand(4, 1, 16, 16, generator=g) < 0.1).double()}[kind]
    t = float(denoising_transferability(a, b, n_projections=16))
    assert 0.0 <= t <= 1.0


def test_bad_input_raises():
    a = noise(0.1, n=2, size=16)
    with pytest.raises(ValueError, match="NaN"):
        denoising_transferability(a, a.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        denoising_transferability(a[0], a)
    with pytest.raises(ValueError, match="all zeros"):
        denoising_transferability(torch.zeros_like(a), a)
    with pytest.raises(ValueError, match="different sizes"):
        denoising_transferability(a, a.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="unknown method"):
        denoising_transferability(a, a, method="kl")
    with pytest.raises(ValueError, match="patch"):
        residual_patches(a, 32)
    with pytest.raises(ValueError, match="empty"):
        denoising_transferability(a[:0], a)


def test_score_denoiser_runs_the_model_and_matches_the_functional():
    model = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1 / 9)                         # a box blur "denoiser"
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(6, 1, 32, 32, generator=g)
    ya = clean + 0.1 * torch.randn(clean.shape, generator=g)
    yb = clean + 0.3 * torch.randn(clean.shape, generator=g)
    res = score_denoiser(model, ya, yb)
    with torch.no_grad():
        ref = denoising_transferability(ya - model(ya), yb - model(yb))
    assert float(res.score) == pytest.approx(float(ref), abs=1e-9) and res.seconds > 0
    as_list = score_denoiser(model, list(ya), list(yb))    # images of any size, one by one
    assert float(as_list.score) == pytest.approx(float(ref), abs=1e-6)
    assert torch.allclose(denoiser_residuals(model, ya, batch_size=4), (ya - model(ya)).detach())
