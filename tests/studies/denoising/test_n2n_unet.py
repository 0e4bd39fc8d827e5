import pytest
import torch
from torch import nn

from tguide.studies.denoising.unet import N2NUNet


def conv_params(cin, cout):
    return cin * cout * 9 + cout


def test_paper_architecture_channels_and_parameter_count():
    net = N2NUNet(in_channels=3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # table 2 of Lehtinen et al. 2018: 7 encoder convs (48), 8 decoder convs (96), then 64, 32, n
    plan = ([(3, 48)] + [(48, 48)] * 6 + [(96, 96), (96, 96)] + [(144, 96), (96, 96)] * 3
            + [(96 + 3, 64), (64, 32), (32, 3)])
    assert [(c.in_channels, c.out_channels) for c in convs] == plan
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(p.numel() for p in net.parameters()) == sum(conv_params(a, b) for a, b in plan)
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == len(convs) - 1 and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d)) for m in net.modules())


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 50, 70), (1, 3, 33, 96), (1, 1, 8, 8)])
def test_shape_contract_any_size(shape):
    net = N2NUNet(in_channels=shape[1], width=8)
    y = net(torch.rand(shape))
    assert y.shape == shape


def test_width_scales_the_net_and_output_is_linear():
    small = N2NUNet(1, width=16)
    assert small.enc_conv0[0].out_channels == 16 and small.dec_blocks[0][0][0].out_channels == 32
    assert small.dec_conv1[0][0].out_channels == round(64 * 16 / 48)
    last = small.dec_conv1[-1]
    assert len(last) == 1 and isinstance(last[0], nn.Conv2d)  # no activation after the last conv
    with torch.no_grad():
        last[0].bias.fill_(-5.0)
    assert small(torch.rand(1, 1, 32, 32)).max() < 0  # negative outputs pass through unclipped


def test_gradients_reach_the_first_layer_and_bad_input_raises():
    net = N2NUNet(1, width=4)
    net(torch.rand(2, 1, 32, 32)).pow(2).mean().backward()
    assert net.enc_conv0[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 32, 32))
    residual = N2NUNet(1, width=4, residual=True)
    with torch.no_grad():
        for p in residual.parameters():
            p.zero_()
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(residual(x), x)
