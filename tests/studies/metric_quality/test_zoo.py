"""Source-model zoo: spec hashing, input mapping, stages / trunks, and the on-disk cache round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tguide.errors import TGuideError
from tguide.nets.lenet import LeNet5
from tguide.nets.mlp import MLP
from tguide.nets.resnet import SmallResNet
from tguide.studies.metric_quality.zoo import SourceSpec, Trunk, Zoo, build_net, default_zoo_dir, extract, source_data, stages, to_input, train_classifier

TINY = SourceSpec("tiny_lenet", "lenet", "mnist", classes=(0, 1, 2), epochs=1, max_train=120, held_out=30, batch=32)


def test_spec_key_and_validation() -> None:
    assert TINY.key() == SourceSpec(**dataclasses.asdict(TINY)).key()
    assert TINY.key() != dataclasses.replace(TINY, seed=1).key()
    assert TINY.key() != dataclasses.replace(TINY, epochs=2).key()
    with pytest.raises(TGuideError, match="arch"):
        SourceSpec("x", "vgg", "mnist")
    with pytest.raises(TGuideError, match="data"):
        SourceSpec("x", "lenet", "imagenet")
    with pytest.raises(TGuideError, match="file-safe"):
        SourceSpec("a/b", "lenet", "mnist")


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TGUIDE_ZOO", str(tmp_path))
    assert default_zoo_dir() == tmp_path
    monkeypatch.delenv("TGUIDE_ZOO")
    assert default_zoo_dir() == Path.home() / ".cache" / "tguide" / "zoo"


def test_to_input_grey_and_rgb() -> None:
    grey = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = to_input(grey)
    assert x.shape == (2, 3, 32, 32)
    assert torch.all(x[:, :, 2:30, 2:30] == 1.0) and torch.all(x[:, :, :2] == -1.0)  # padded border is black
    rgb = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert torch.all(to_input(rgb) == -1.0)
    with pytest.raises(ValueError, match="at most"):
        to_input(torch.zeros(1, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("net,names", [
    (LeNet5(5, 3, 32), ["conv1", "conv2", "fc1", "fc2"]),
    (SmallResNet(5, 3, width=8), ["stem", "layer1", "layer2", "layer3"]),
    (MLP(3 * 32 * 32, (32, 16), 5), ["fc1", "fc2"]),
])
def test_stages_extract_and_trunk(net: torch.nn.Module, names: list[str]) -> None:
    assert [n for n, _ in stages(net)] == names
    x = torch.randn(6, 3, 32, 32)
    feats, logits = extract(net, x, batch=4)
    assert list(feats) == names and logits.shape == (6, 5)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, net(x))  # extract's last stage + head is the network itself
        torch.testing.assert_close(feats[names[-1]], net.embed(x))
    for layer in names:
        trunk = Trunk(net, layer, 3, feats[layer].shape[1])
        assert trunk(x).shape == (6, 3)
    with pytest.raises(ValueError, match="not a stage"):
        Trunk(net, "nope", 3, 4)


def test_train_classifier_loss_goes_down() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    net = MLP(3 * 32 * 32, (16,), 2)
    before = torch.nn.functional.cross_entropy(net(x), y).item()
    train_classifier(net, x, y, steps=40, lr=1e-2, batch=16, seed=0)
    assert torch.nn.functional.cross_entropy(net(x), y).item() < 0.5 * before


def test_source_data_disjoint_from_targets(data_root: Path) -> None:
    x, y, xh, yh = source_data(TINY, str(data_root))
    assert x.shape == (120, 3, 32, 32) and xh.shape == (30, 3, 32, 32)
    assert set(y.tolist()) <= {0, 1, 2}
    # MNIST sources never see MNIST test images 0-2999 (= the MNIST-M images): compare pixels
    from tguide.data.mnist import load_mnist_test

    images, _ = load_mnist_test(data_root)
    forbidden = to_input(images[:3000]).flatten(1)
    seen = torch.cat([x, xh]).flatten(1)
    assert not any(bool((forbidden == row).all(1).any()) for row in seen[:40])
    mm = SourceSpec("mm", "lenet", "mnist_m", held_out=100, max_train=10_000)
    xm, _, xmh, _ = source_data(mm, str(data_root))
    assert xm.shape[0] + xmh.shape[0] == 1500  # files 1500-2999 only


def test_cache_round_trip(tmp_path: Path, data_root: Path) -> None:
    zoo = Zoo(tmp_path / "zoo", str(data_root))
    assert not zoo.has(TINY)
    with pytest.raises(TGuideError, match="not cached"):
        zoo.load(TINY)
    net, meta = zoo.get(TINY)
    assert zoo.has(TINY) and zoo.path(TINY).name.startswith("tiny_lenet-")
    assert meta["num_train"] == 120 and 0.0 <= meta["held_out_acc"] <= 1.0
    loaded, meta2 = zoo.load(TINY)
    assert meta2 == meta
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)
    mtime = zoo.path(TINY).stat().st_mtime_ns
    zoo.get(TINY)  # cached: not retrained
    assert zoo.path(TINY).stat().st_mtime_ns == mtime
    # a file whose stored spec differs from its name is refused
    other = dataclasses.replace(TINY, seed=7)
    zoo.path(TINY).rename(zoo.path(other))
    with pytest.raises(TGuideError, match="different spec"):
        zoo.load(other)
    assert isinstance(build_net(other, 3), LeNet5)
