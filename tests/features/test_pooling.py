"""Pooling per layout: reduce_output, token / channels-last pools, pool specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.features import LayerCapture, extract_features, reduce_output


def test_reduce_output_rejects_non_tensors_and_scalars():
    with pytest.raises(ValueError, match=r"returned tuple, not a tensor"):
        reduce_output((torch.zeros(2, 3),), "avg", "lstm")
    with pytest.raises(ValueError, match=r"batch axis and at least one feature axis"):
        reduce_output(torch.zeros(3), "avg", "head")
    x = torch.randn(2, 3, 7)  # 3-D is ambiguous under "avg": (B, T, C) tokens or (B, C, L)?
    with pytest.raises(ValueError, match=r"3-D outputs require pool='cls' \| 'mean'.*'flatten'"):
        reduce_output(x, "avg", "blocks.3")
    np.testing.assert_allclose(reduce_output(x, lambda o: o.mean(2)).numpy(), x.numpy().mean(axis=2), rtol=1e-6)


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


def test_pool_specs_per_layer(lenet):
    from tguide.features import check_pool, describe_pool, pool_for

    with pytest.raises(ValueError, match=r"`pool` must be one of"):
        LayerCapture(lenet, ["fc1"], pool="max")
    with pytest.raises(ValueError, match=r"`pool\['fc1'\]` must be one of"):
        check_pool({"fc1": "max"})
    spec = {"conv1": "flatten", "*": "none"}
    assert pool_for(spec, "conv1") == "flatten" and pool_for(spec, "fc1") == "none"
    assert pool_for({"conv1": "flatten"}, "fc1") == "avg" and pool_for("cls", "any") == "cls"

    def halve(out):
        return out[:, ::2]

    assert describe_pool({"fc1": halve}, "fc1").endswith("halve") and describe_pool(spec, "conv1") == "flatten"
    x = torch.randn(2, 1, 28, 28)
    with LayerCapture(lenet, ["conv1", "fc1"], pool={"conv1": "flatten", "fc1": halve}) as cap:
        lenet(x)
    assert cap.outputs["conv1"].shape == (2, 6 * 28 * 28) and cap.outputs["fc1"].shape == (2, 60)
