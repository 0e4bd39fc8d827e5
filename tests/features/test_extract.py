"""Image-level features of a loader: values, modes, ids, max_samples, batch unpacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.features import default_unpack, extract_features


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_extract_matches_manual_forward_and_restores_modes(lenet, loader):
    model = nn.Sequential()
    model.add_module("body", lenet)
    model.add_module("bn", nn.BatchNorm1d(10))  # would update its running stats in train mode
    model.train()
    lenet.conv1.eval()  # a deliberately frozen submodule must stay in eval mode afterwards
    seen_modes = []
    pre = lenet.fc2.register_forward_pre_hook(lambda m, a: seen_modes.append(m.training))
    fs = extract_features(model, loader, ["body.fc1", "body.fc2"], max_samples=17)
    pre.remove()
    assert seen_modes and not any(seen_modes)  # ran in eval mode
    assert model.training and lenet.training and lenet.fc2.training and not lenet.conv1.training
    assert float(model.bn.running_mean.abs().sum()) == 0.0 and int(model.bn.num_batches_tracked) == 0
    assert fs.features["body.fc1"].shape == (17, 120) and fs.features["body.fc2"].shape == (17, 84)
    assert not fs.features["body.fc2"].requires_grad
    x, y = loader.dataset.tensors
    ids = fs.ids
    assert ids.numel() == 17 and len(set(ids.tolist())) == 17  # a stratified subset, not the first 17
    np.testing.assert_array_equal(fs.labels.numpy(), y[ids].numpy())
    with torch.no_grad():  # fc2's own output (before its ReLU), by hand
        h = lenet.pool2(torch.relu(lenet.conv2(lenet.pool1(torch.relu(lenet.conv1(x[ids]))))))
        fc2 = lenet.fc2(torch.relu(lenet.fc1(h.flatten(1))))
    np.testing.assert_allclose(fs.features["body.fc2"].numpy(), fc2.numpy(), rtol=1e-5, atol=1e-6)
    assert _hooks(model) == 0


def test_extract_ids_and_errors(lenet, loader):
    fs = extract_features(lenet, loader, "fc2", ids=torch.arange(100, 123))
    np.testing.assert_array_equal(fs.ids.numpy(), np.arange(100, 123))
    with pytest.raises(ValueError, match=r"one class id per sample.*extract_pixel_features"):
        masks = DataLoader(TensorDataset(torch.randn(4, 1, 28, 28), torch.zeros(4, 28, 28)), batch_size=2)
        extract_features(lenet, masks, ["fc1"])
    with pytest.raises(ValueError, match=r"`max_samples` must be"):
        extract_features(lenet, loader, ["fc1"], max_samples=0)
    with pytest.raises(ValueError, match=r"yielded no samples"):
        extract_features(lenet, [], ["fc1"])


def test_default_unpack_dicts_and_custom():
    x, y = torch.zeros(2, 3), torch.tensor([1, 2])
    assert default_unpack({"image": x, "mask": y})[1] is y
    assert default_unpack((x, y, "meta"))[0] is x
    with pytest.raises(ValueError, match=r"cannot find \(inputs, labels\).*unpack="):
        default_unpack({"pixels": x})


def test_max_samples_is_stratified_on_a_class_sorted_loader(lenet):
    y = torch.arange(5).repeat_interleave(20)  # sorted by class: the first 10 rows are all class 0
    x = torch.randn(100, 1, 28, 28)
    for loader in (DataLoader(TensorDataset(x, y), batch_size=16),            # labels known up front
                   [(x[i:i + 16], y[i:i + 16]) for i in range(0, 100, 16)]):  # a plain iterable
        fs = extract_features(lenet, loader, "fc2", max_samples=10, seed=3)
        assert torch.bincount(fs.labels, minlength=5).tolist() == [2, 2, 2, 2, 2]
        np.testing.assert_array_equal(fs.labels.numpy(), y[fs.ids].numpy())
        again = extract_features(lenet, loader, "fc2", max_samples=10, seed=3)
        assert torch.equal(again.ids, fs.ids)  # seeded
