import math

import pytest
import torch

from tguide.studies.siren.data import coordinate_grid
from tguide.studies.siren.net import BatchedSiren, Siren, siren_init_bounds
from tguide.studies.siren.prefit import fit_batched


def _uniform_checks(w: torch.Tensor, a: float) -> None:
    # U(-a, a): inside the bounds, mean 0, std a/sqrt(3), and reaching close to the bounds
    assert w.abs().max() <= a
    assert w.abs().max() > 0.95 * a
    assert abs(float(w.mean())) < 0.05 * a
    assert float(w.std()) == pytest.approx(a / math.sqrt(3), rel=0.05)


def test_siren_init_statistics():
    torch.manual_seed(0)
    net = Siren(2, 256, 3, 3, omega0=30.0)
    linears = [m.linear for m in net.net[:-1]] + [net.net[-1]]
    assert len(linears) == 5  # first sine + 3 hidden sine + linear output
    assert isinstance(net.net[-1], torch.nn.Linear)
    _uniform_checks(linears[0].weight.detach(), 1 / 2)  # first layer: U(-1/n, 1/n), n = 2
    for lin in linears[1:]:
        _uniform_checks(lin.weight.detach(), math.sqrt(6 / 256) / 30)
    assert siren_init_bounds(256, False, 30.0) == pytest.approx(math.sqrt(6 / 256) / 30)


def test_siren_activations_are_arcsine_distributed():
    # the point of the init (Sitzmann et al. 2020, Sec. 3.2): every later sine layer's output
    # follows the arcsine distribution on [-1, 1], whose variance is 1/2, whatever the depth
    torch.manual_seed(1)
    net = Siren(2, 512, 4, 3)
    x = torch.rand(4096, 2) * 2 - 1
    with torch.no_grad():
        h = net.net[0](x)
        for layer in net.net[1:-1]:
            h = layer(h)
            assert float(h.var()) == pytest.approx(0.5, abs=0.05)
            assert float(h.mean()) == pytest.approx(0.0, abs=0.05)


def test_batched_init_statistics_per_member():
    torch.manual_seed(2)
    b = BatchedSiren(4, 2, 128, 2, 3)
    assert [tuple(w.shape) for w in b.weights] == [(4, 128, 2), (4, 128, 128), (4, 128, 128), (4, 3, 128)]
    for m in range(4):
        _uniform_checks(b.weights[1][m].detach(), math.sqrt(6 / 128) / 30)
    assert not torch.equal(b.weights[1][0], b.weights[1][1])  # independent members


def test_batched_equals_separate_networks_forward_and_fit():
    torch.manual_seed(3)
    coords = coordinate_grid(8, 8)
    nets = [Siren(2, 16, 2, 3) for _ in range(3)]
    batched = BatchedSiren.from_sirens(nets)
    out = batched(coords)
    assert out.shape == (3, 64, 3)
    for m, n in enumerate(nets):
        torch.testing.assert_close(out[m], n(coords))
        torch.testing.assert_close(batched(coords, hidden=True)[m], n.hidden(coords))
    targets = torch.rand(3, 64, 3) * 2 - 1
    curves = fit_batched(batched, coords, targets, 15, lr=1e-3)
    for m, n in enumerate(nets):  # each with its own Adam, one at a time
        opt = torch.optim.Adam(n.parameters(), lr=1e-3)
        for _ in range(15):
            opt.zero_grad()
            ((n(coords) - targets[m]) ** 2).mean().backward()
            opt.step()
        torch.testing.assert_close(batched.member(m)(coords), n(coords), atol=1e-5, rtol=1e-5)
        mse = ((n(coords) - targets[m]) ** 2).mean()
        assert float(curves[m, -1]) == pytest.approx(float(10 * torch.log10(4 / mse)), abs=1e-3)
    assert (curves[:, -1] > curves[:, 0]).all()


def test_select_copies_members():
    b = BatchedSiren(2, 2, 8, 1, 3)
    s = b.select([1, 1, 0])
    assert s.members == 3
    torch.testing.assert_close(s(coordinate_grid(4, 4))[0], b(coordinate_grid(4, 4))[1])
    with torch.no_grad():
        s.weights[0].zero_()
    assert b.weights[0].abs().sum() > 0  # a copy, not a view


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="hidden_features"):
        Siren(2, 0, 3, 3)
    with pytest.raises(ValueError, match="members"):
        BatchedSiren(0)
    with pytest.raises(ValueError, match="coords must be"):
        BatchedSiren(2, 2, 8, 1, 3)(torch.zeros(3, 10, 2))
    with pytest.raises(ValueError, match="does not match"):
        BatchedSiren(1, 2, 8, 1, 3).load_member(0, Siren(2, 16, 1, 3))
