"""Named-layer capture: shapes, pooling, hook clean-up, mode restore, pixel-level features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.features import (
    LayerCapture,
    default_unpack,
    eval_mode,
    extract_features,
    reduce_output,
    resolve_layers,
)
from tguide.nets.lenet import LeNet5
from tguide.pixel_features import extract_pixel_features


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5()


@pytest.fixture
def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 1, 28, 28, generator=g)
    y = torch.randint(0, 4, (23,), generator=g) * 3 + 5  # labels {5, 8, 11, 14}
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_capture_shapes_by_pool(lenet):
    x = torch.randn(5, 1, 28, 28)
    expected = {
        "avg": {"conv1": (5, 6), "pool2": (5, 16), "fc1": (5, 120), "fc3": (5, 10)},
        "flatten": {"conv1": (5, 6 * 28 * 28), "pool2": (5, 16 * 5 * 5), "fc1": (5, 120), "fc3": (5, 10)},
        "none": {"conv1": (5, 6, 28, 28), "pool2": (5, 16, 5, 5), "fc1": (5, 120), "fc3": (5, 10)},
    }
    for pool, shapes in expected.items():
        with LayerCapture(lenet, list(shapes), pool=pool) as cap:
            lenet(x)
        assert {k: tuple(v.shape) for k, v in cap.outputs.items()} == shapes
        assert _hooks(lenet) == 0


def test_pooled_values_match_numpy(lenet):
    x = torch.randn(4, 1, 28, 28)
    with LayerCapture(lenet, ["conv2"], pool="avg") as cap_avg:
        lenet(x)
    with LayerCapture(lenet, ["conv2"], pool="flatten") as cap_flat:
        lenet(x)
    # independent path: run the first layers by hand, pool with numpy
    with torch.no_grad():
        conv2 = lenet.conv2(lenet.pool1(torch.relu(lenet.conv1(x)))).numpy().astype(np.float64)  # (4,16,10,10)
    np.testing.assert_allclose(cap_avg.outputs["conv2"].numpy(), conv2.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap_flat.outputs["conv2"].numpy(), conv2.reshape(4, -1), rtol=1e-5, atol=1e-6)


def test_hooks_removed_even_when_forward_raises(lenet):
    with pytest.raises(RuntimeError):
        with LayerCapture(lenet, ["conv1", "fc2"]):
            assert _hooks(lenet) == 2
            lenet(torch.randn(2, 3, 28, 28))  # wrong channel count
    assert _hooks(lenet) == 0

    bad = DataLoader(TensorDataset(torch.randn(4, 3, 28, 28), torch.arange(4)), batch_size=2)
    lenet.train()
    with pytest.raises(RuntimeError):
        extract_features(lenet, bad, ["fc1"])
    assert _hooks(lenet) == 0 and lenet.training  # hooks gone and mode restored after the error


def test_unknown_duplicate_empty_layers(lenet):
    with pytest.raises(ValueError, match=r"no module named 'fc4'.*Did you mean.*fc1.*named_modules"):
        resolve_layers(lenet, ["fc4"])
    with pytest.raises(ValueError, match=r"more than once"):
        resolve_layers(lenet, ["fc1", "fc1"])
    with pytest.raises(ValueError, match=r"`layers` is empty"):
        resolve_layers(lenet, [])
    with pytest.raises(ValueError, match=r"`pool` must be one of"):
        LayerCapture(lenet, ["fc1"], pool="max")


def test_reduce_output_rejects_non_tensors_and_scalars():
    with pytest.raises(ValueError, match=r"returned tuple, not a tensor"):
        reduce_output((torch.zeros(2, 3),), "avg", "lstm")
    with pytest.raises(ValueError, match=r"batch axis and at least one feature axis"):
        reduce_output(torch.zeros(3), "avg", "head")
    x = torch.randn(2, 3, 7)  # 3-D is ambiguous under "avg": (B, T, C) tokens or (B, C, L)?
    with pytest.raises(ValueError, match=r"3-D outputs require pool='cls' \| 'mean'.*'flatten'"):
        reduce_output(x, "avg", "blocks.3")
    np.testing.assert_allclose(reduce_output(x, lambda o: o.mean(2)).numpy(), x.numpy().mean(axis=2), rtol=1e-6)


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


def test_shared_module_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(3, 3)

        def forward(self, x):
            return self.block(self.block(x))

    model = Twice()
    data = DataLoader(TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), batch_size=2)
    with pytest.raises(ValueError, match=r"\{'block': 2\}.*exactly once"):
        extract_features(model, data, ["block"])
    assert _hooks(model) == 0


def test_default_unpack_dicts_and_custom():
    x, y = torch.zeros(2, 3), torch.tensor([1, 2])
    assert default_unpack({"image": x, "mask": y})[1] is y
    assert default_unpack((x, y, "meta"))[0] is x
    with pytest.raises(ValueError, match=r"cannot find \(inputs, labels\).*unpack="):
        default_unpack({"pixels": x})


class _Seg(nn.Module):
    """Tiny encoder: full-resolution conv, then a stride-2 conv (half resolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = nn.Conv2d(1, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 5, 3, stride=2, padding=1)

    def forward(self, x):
        return self.down(torch.relu(self.full(x)))


def test_pixel_features_match_upsampled_maps():
    torch.manual_seed(0)
    model = _Seg()
    x = torch.randn(3, 1, 12, 10)
    masks = torch.randint(0, 3, (3, 1, 12, 10))
    masks[:, :, :2] = 255  # ignored band
    loader = DataLoader(TensorDataset(x, masks), batch_size=2)
    fs = extract_pixel_features(model, loader, ["full", "down"], pixels_per_image=20, ignore_index=255, seed=3)
    assert fs.features["full"].shape == (60, 3) and fs.features["down"].shape == (60, 5)
    assert not bool((fs.labels == 255).any())
    np.testing.assert_array_equal(np.bincount(fs.ids.numpy()), [20, 20, 20])
    # independent path: full maps, upsampled by F.interpolate, then find every row's pixel
    with torch.no_grad():
        full = model.full(x)
        down = F.interpolate(model.down(torch.relu(full)), size=(12, 10), mode="bilinear", align_corners=False)
    for i in range(3):
        rows = fs.features["full"][fs.ids == i].numpy()
        lab = fs.labels[fs.ids == i].numpy()
        table = full[i].reshape(3, -1).T.numpy()  # (H*W, 3)
        pos = [int(np.argmin(np.abs(table - r).sum(1))) for r in rows]
        assert len(set(pos)) == 20 and all(p >= 2 * 10 for p in pos)  # distinct, none in the ignored band
        np.testing.assert_allclose(rows, table[pos], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(lab, masks[i, 0].flatten().numpy()[pos])
        np.testing.assert_allclose(fs.features["down"][fs.ids == i].numpy(),
                                   down[i].reshape(5, -1).T.numpy()[pos], rtol=1e-5, atol=1e-6)


def test_pixel_draw_independent_of_batching():
    torch.manual_seed(0)
    model = _Seg()
    x, masks = torch.randn(5, 1, 8, 8), torch.randint(0, 2, (5, 8, 8)).float()
    a = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=5), ["down"], pixels_per_image=7)
    b = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["down"], pixels_per_image=7)
    torch.testing.assert_close(a.features["down"], b.features["down"])
    torch.testing.assert_close(a.labels, b.labels)
    c = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["down"],
                               pixels_per_image=7, seed=1)
    assert not torch.equal(a.features["down"], c.features["down"])
    every = extract_pixel_features(model, DataLoader(TensorDataset(x, masks), batch_size=2), ["full"],
                                   pixels_per_image=None, max_samples=2)
    assert every.features["full"].shape == (2 * 64, 3)
    with pytest.raises(ValueError, match=r"pixel features need label masks"):
        extract_pixel_features(model, DataLoader(TensorDataset(x, torch.zeros(5)), batch_size=2), ["full"])
    with pytest.raises(ValueError, match=r"non-integer values"):
        extract_pixel_features(model, DataLoader(TensorDataset(x, masks + 0.5), batch_size=2), ["full"])


def test_eval_mode_context_restores_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[0].eval()
    with pytest.raises(KeyError):
        with eval_mode(model):
            assert not model.training and not model[1].training
            raise KeyError("boom")
    assert model.training and model[1].training and not model[0].training



# -- pooling per layout, max_samples, "auto", typos ------------------------------------------

class _Tokens(nn.Module):
    """A toy transformer-ish net: conv patches -> (B, T, C) tokens -> (B, H, W, C) map -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.tokens = nn.Identity()   # (B, 1 + T, C), a class token first
        self.nhwc = nn.Identity()     # (B, H, W, C)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        p = self.patch(x)                                   # (B, C, H, W)
        t = p.flatten(2).transpose(1, 2)                    # (B, T, C)
        t = torch.cat([t.mean(1, keepdim=True) * 2, t], 1)  # (B, 1 + T, C)
        t = self.tokens(t)
        m = self.nhwc(p.permute(0, 2, 3, 1))                # (B, H, W, C)
        return self.head(t[:, 0] + m.mean((1, 2)))


def test_token_and_channels_last_pools_match_explicit_computation():
    torch.manual_seed(0)
    net = _Tokens()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        p = net.patch(x)
    t = p.flatten(2).transpose(1, 2)
    tokens = torch.cat([t.mean(1, keepdim=True) * 2, t], 1)
    pools = {"tokens": "cls", "nhwc": "channels_last", "patch": "avg"}
    with LayerCapture(net, list(pools), pool=pools) as cap, torch.no_grad():
        net(x)
    np.testing.assert_allclose(cap.outputs["tokens"].numpy(), tokens[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(cap.outputs["nhwc"].numpy(), p.permute(0, 2, 3, 1).mean((1, 2)).numpy(),
                               rtol=1e-5, atol=1e-6)
    # channels-last and channels-first views of the same map give the same features
    np.testing.assert_allclose(cap.outputs["nhwc"].numpy(), cap.outputs["patch"].numpy(), rtol=1e-5, atol=1e-6)
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=4)
    fs = extract_features(net, loader, ["tokens"], pool={"tokens": "mean"})
    np.testing.assert_allclose(fs.features["tokens"].numpy(), tokens.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"3-D outputs require pool='cls' \| 'mean'"):
        extract_features(net, loader, ["tokens"])  # default "avg" on tokens: ambiguous
    with pytest.raises(ValueError, match=r"pool='cls' reads \(B, T, C\) tokens"):
        extract_features(net, loader, ["patch"], pool="cls")
    with pytest.raises(ValueError, match=r"not among the layers.*Did you mean 'tokens'"):
        extract_features(net, loader, ["tokens"], pool={"tokenz": "cls"})


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
