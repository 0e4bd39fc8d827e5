import math

import pytest
import torch

from tguide.studies.denoising.noise import (NoiseModel, bernoulli, gaussian, impulse, n2c_pair, n2n_pair, parse_noise, poisson,
                               text_overlay)
from tguide.errors import TGuideError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_mean_and_variance_on_the_255_scale():
    x = torch.full((4, 1, 128, 128), 0.4)
    for sigma in (15.0, 50.0):
        n = gaussian(x, sigma, gen()) - x
        assert abs(float(n.mean())) < 3 * (sigma / 255) / math.sqrt(n.numel())  # mean 0
        assert float(n.std()) == pytest.approx(sigma / 255, rel=0.02)
    assert gaussian(x, 0.0, gen()).equal(x)
    assert gaussian(torch.full((1, 1, 8, 8), 0.99), 200.0, gen(), clip=True).max() <= 1


def test_poisson_mean_and_variance_scale_with_lambda():
    x = torch.full((2, 1, 128, 128), 0.5)
    for lam in (10.0, 60.0):
        y = poisson(x, lam, gen())
        k = y * lam
        assert torch.allclose(k, k.round(), atol=1e-4)  # photon counts / lambda
        assert float(y.mean()) == pytest.approx(0.5, abs=0.01)
        assert float(y.var()) == pytest.approx(0.5 / lam, rel=0.05)  # var = x / lambda
    # signal dependence: darker pixels get less variance
    dark = poisson(torch.full((1, 1, 128, 128), 0.1), 30.0, gen())
    assert float(dark.var()) == pytest.approx(0.1 / 30, rel=0.06)


def test_bernoulli_and_impulse_fractions_and_channel_sharing():
    x = torch.full((2, 3, 96, 96), 0.5)
    b = bernoulli(x, 0.3, gen())
    zeros = (b == 0).all(dim=1)
    assert float(zeros.float().mean()) == pytest.approx(0.3, abs=0.02)
    assert ((b == 0).any(dim=1) == zeros).all()  # a pixel's channels are dropped together
    i = impulse(x, 0.2, gen())
    hit = (i != 0.5).any(dim=1)
    assert float(hit.float().mean()) == pytest.approx(0.2, abs=0.02)
    assert float(i[:, 0][hit].mean()) == pytest.approx(0.5, abs=0.03)  # U[0, 1] replacements
    assert 0 <= float(i.min()) and float(i.max()) <= 1


def test_text_overlay_coverage_and_determinism():
    x = torch.full((2, 1, 64, 64), 0.5)
    y = text_overlay(x, 0.2, gen(3))
    covered = (y != 0.5).float().mean(dim=(1, 2, 3))
    assert (covered > 0.1).all() and (covered < 0.5).all()
    assert y.equal(text_overlay(x, 0.2, gen(3)))
    assert not y.equal(text_overlay(x, 0.2, gen(4)))


def test_seeded_generators_reproduce_and_differ():
    x = torch.rand(2, 1, 32, 32, generator=gen(9))
    for m in (NoiseModel("gaussian", 25), NoiseModel("poisson", 30), NoiseModel("impulse", 0.1)):
        assert m(x, gen(1)).equal(m(x, gen(1)))
        assert not m(x, gen(1)).equal(m(x, gen(2)))


def test_n2n_pairs_are_independent_and_n2c_targets_clean():
    clean = torch.rand(8, 1, 64, 64, generator=gen(5))
    a, b = n2n_pair(clean, parse_noise("gaussian:25"), gen(0))
    na, nb = (a - clean).flatten(), (b - clean).flatten()
    corr = float(torch.corrcoef(torch.stack([na, nb]))[0, 1])
    assert abs(corr) < 4 / math.sqrt(na.numel())
    assert float(nb.std()) == pytest.approx(25 / 255, rel=0.03)
    x, y = n2c_pair(clean, parse_noise("poisson:30"), gen(0))
    assert y is clean and not x.equal(clean)


def test_parse_noise_and_errors():
    m = parse_noise("gaussian:25")
    assert m == NoiseModel("gaussian", 25.0) and m.name == "gaussian:25"
    assert parse_noise({"kind": "impulse", "level": 0.2}).name == "impulse:0.2"
    assert parse_noise(m) is m
    with pytest.raises(TGuideError, match="kind:level"):
        parse_noise("gaussian")
    with pytest.raises(TGuideError, match="unknown noise kind"):
        parse_noise("speckle:3")
    with pytest.raises(TGuideError, match="not a number"):
        parse_noise("gaussian:abc")
    with pytest.raises(ValueError, match="sigma"):
        gaussian(torch.zeros(1, 1, 4, 4), -1.0)
    with pytest.raises(ValueError, match="float"):
        gaussian(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 5.0)
    with pytest.raises(ValueError, match="lambda"):
        poisson(torch.zeros(1, 1, 4, 4), 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        impulse(torch.zeros(1, 1, 4, 4), 1.5)
