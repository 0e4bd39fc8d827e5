import copy

import pytest
import torch
import torchvision
from torch import nn

from tguide.select.backbone import Backbone


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=7)


def _counter(module):
    calls = []
    module.register_forward_hook(lambda m, a, o: calls.append(1))
    return calls


def test_stops_at_the_cut_and_matches_a_manual_forward():
    net = _resnet18().eval()
    after = {name: _counter(getattr(net, name)) for name in ("layer3", "layer4", "fc")}
    before = _counter(net.layer2)
    bb = Backbone(net, "layer2", input_shape=(3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got = bb(x)
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        want = net.layer2(net.layer1(h)).mean(dim=(2, 3))
    assert bb.feature_dim == 128 and got.shape == (4, 128)
    torch.testing.assert_close(got, want)
    assert all(not calls for calls in after.values())  # neither the dummy forward nor this one ran them
    assert len(before) == 3  # the dummy forward, ours, the manual one
    assert "layer2" in repr(bb)


def test_parameters_after_the_cut_are_frozen_and_get_no_gradient():
    net = _resnet18()
    bb = Backbone(net, "layer2", input_shape=(3, 32, 32))
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen == set(bb.unused_parameters)
    assert all(n.startswith(("network.layer3", "network.layer4", "network.fc")) for n in frozen)
    assert "network.fc.weight" in frozen and not any(n.startswith("network.layer2") for n in frozen)
    bb(torch.randn(2, 3, 32, 32)).sum().backward()
    assert bb.network.layer2[1].conv2.weight.grad is not None and bb.network.conv1.weight.grad is not None
    assert all(p.grad is None for n, p in bb.named_parameters() if n in frozen)
    assert net.training  # the dummy forward ran in eval mode and restored the mode


def test_dummy_forward_leaves_batchnorm_statistics_alone_and_finds_the_input_size():
    net = _resnet18()
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    bb = Backbone(net, "layer1")  # no input_shape: first conv has 3 channels, 32 px runs
    assert bb.input_shape == (3, 32, 32) and bb.feature_dim == 64
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())


def test_pools_whole_output_deepcopy_and_errors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 8 * 8, 5))
    flat = Backbone(net, "2", pool="flatten", input_shape=(1, 12, 12))
    assert flat.feature_dim == 6 * 8 * 8
    whole = Backbone(net, None, input_shape=(1, 12, 12))
    x = torch.randn(3, 1, 12, 12)
    torch.testing.assert_close(whole(x), net(x))
    clone = copy.deepcopy(flat)  # no hook is left on the network between calls
    torch.testing.assert_close(clone(x), flat(x))
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        Backbone(net, "conv9", input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="`pool` must be one of"):
        Backbone(net, "0", pool="max", input_shape=(1, 12, 12))

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match="did not run"):
        Backbone(Skips(), "unused", input_shape=(3,))
    with pytest.raises(ValueError, match="failed for every input shape"):
        Backbone(nn.Linear(5, 2), None, input_shape=(4,))
