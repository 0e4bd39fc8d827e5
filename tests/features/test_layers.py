"""Layer names: resolution, typos, duplicates, "auto" and the output pseudo-layer."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tguide.features import auto_layers, extract_features, resolve_layers
from tguide.nets.lenet import LeNet5


def test_unknown_duplicate_empty_layers(lenet):
    with pytest.raises(ValueError, match=r"no module named 'fc4'.*Did you mean.*fc1.*named_modules"):
        resolve_layers(lenet, ["fc4"])
    with pytest.raises(ValueError, match=r"more than once"):
        resolve_layers(lenet, ["fc1", "fc1"])
    with pytest.raises(ValueError, match=r"`layers` is empty"):
        resolve_layers(lenet, [])


def test_layer_typo_suggests_and_auto_layers():
    from torchvision.models import resnet18

    from tguide.features import OUTPUT, auto_layers

    with pytest.raises(ValueError, match=r"no module named 'layer5'.*Did you mean"):
        resolve_layers(resnet18(), ["layer5"])
    assert auto_layers(resnet18()) == ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    net = LeNet5()
    loader = DataLoader(TensorDataset(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])), batch_size=2)
    fs = extract_features(net, loader, ["fc2", OUTPUT])
    assert fs.features[OUTPUT].shape == (4, 10)


def test_auto_layers_of_a_features_sequential_are_the_resolution_ends():
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    net.train()
    bn = net.features[0][1]
    before = bn.running_mean.clone()
    names = auto_layers(net)
    # independent reference: the spatial size after every block, by hand, at 64 px
    sizes, x = [], torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        net.eval()
        for block in net.features:
            x = block(x)
            sizes.append(x.shape[-1])
        net.train()
    ends = [i for i in range(len(sizes)) if i + 1 == len(sizes) or sizes[i + 1] != sizes[i]]
    assert names == [f"features.{i}" for i in ends[1:]]
    assert names == ["features.3", "features.6", "features.13", "features.18"]  # 16, 8, 4 and 2 px stages
    assert net.training and bn.training and torch.equal(bn.running_mean, before)  # probe left no trace
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
