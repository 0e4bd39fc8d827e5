"""The one forward-hook capture: shapes per pool, values, hook clean-up, calls per pass, eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.features import LayerCapture, eval_mode, extract_features


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


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


def test_eval_mode_context_restores_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[0].eval()
    with pytest.raises(KeyError):
        with eval_mode(model):
            assert not model.training and not model[1].training
            raise KeyError("boom")
    assert model.training and model[1].training and not model[0].training


# -- stop after the captured layers (the cut of Backbone), modules entered --------------------

def test_stop_ends_the_forward_after_the_captured_layers(lenet):
    ran = []
    handle = lenet.fc1.register_forward_pre_hook(lambda m, a: ran.append("fc1"))
    x = torch.randn(3, 1, 28, 28)
    try:
        with LayerCapture(lenet, ["conv2"], pool="none", stop=True) as cap:
            assert cap.run(x) is None  # stopped: no model output
            assert not ran  # the modules after conv2 never ran
            cap.check_ran_once()
        with torch.no_grad():  # conv2's own output, by hand
            conv2 = lenet.conv2(lenet.pool1(torch.relu(lenet.conv1(x))))
        torch.testing.assert_close(cap.outputs["conv2"], conv2)
        with LayerCapture(lenet, ["conv2", "fc2"], pool="avg", stop=True) as cap:
            assert cap.run(x) is None and set(cap.outputs) == {"conv2", "fc2"}  # stops after the last of them
        assert ran == ["fc1"] and _hooks(lenet) == 0
        with LayerCapture(lenet, ["conv2"]) as cap:  # without stop, run returns the output and runs all
            out = cap.run(x)
        assert out.shape == (3, 10) and ran == ["fc1", "fc1"]
    finally:
        handle.remove()


def test_stop_of_an_inner_capture_is_not_caught_by_an_outer_one(lenet):
    x = torch.randn(2, 1, 28, 28)
    with LayerCapture(lenet, ["fc3"]) as outer, LayerCapture(lenet, ["conv1"], stop=True) as inner:
        assert outer.run(x, forward=lambda m, v: inner.run(v)) is None  # the inner run caught its own stop
    assert "conv1" in inner.outputs and "fc3" not in outer.outputs
    with LayerCapture(lenet, ["conv1"], stop=True):  # called without run(): the stop escapes
        with pytest.raises(Exception, match="stopped after the captured layers"):
            lenet(x)
    assert _hooks(lenet) == 0


def test_modules_entered_lists_the_modules_a_pass_runs():
    from tguide.features import modules_entered

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with modules_entered(net) as ran:
        net[:2](torch.zeros(1, 3))  # a slice: the last Linear never runs
    assert net[0] in ran and net[1] in ran and net[2] not in ran
    assert sum(len(m._forward_pre_hooks) for m in net.modules()) == 0


@pytest.mark.parametrize("layer,pool", [("conv2", "avg"), ("pool2", "flatten"), ("fc1", "avg")])
def test_backbone_and_extract_features_give_identical_tensors(lenet, loader, layer, pool):
    from tguide.select.backbone import Backbone

    fs = extract_features(lenet, loader, [layer], pool=pool)
    bb = Backbone(lenet, layer, pool=pool, input_shape=(1, 28, 28), freeze_unused=False)
    x, _ = loader.dataset.tensors
    with eval_mode(bb), torch.no_grad():
        cut = torch.cat([bb(x[i:i + 8]) for i in range(0, len(x), 8)])  # the loader's batches
    assert cut.shape == fs.features[layer].shape and bb.feature_dim == cut.shape[1]
    assert torch.equal(cut, fs.features[layer])  # bit for bit: one capture, one pooling
    assert _hooks(lenet) == 0
