"""Candidate specs: zoo, torchvision, timm, tguide checkpoints, state-dict files; one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tguide.errors import TGuideError
from tguide.select.candidates import Candidate, CandidateError, resolve_candidate, resolve_candidates


def test_zoo_candidate_and_random_twin():
    cand = resolve_candidate("zoo:resnet20_cifar10")
    assert isinstance(cand, Candidate) and cand.head and not cand.network.training
    assert cand.layers == ["layer1", "layer2", "layer3", "avgpool"]
    assert "sha256 12fca82f" in cand.provenance and cand.fingerprint.startswith("sha256:")
    assert cand.source_accuracy == pytest.approx(0.8103) and cand.num_params == 269_722
    x = cand.transform(Image.new("L", (40, 30), 128))  # grey, odd size -> the model's (3, 32, 32) input
    assert x.shape == (3, 32, 32)
    rand = resolve_candidate("zoo:resnet20_cifar10:random")
    again = resolve_candidate("zoo:resnet20_cifar10:random")
    assert rand.name == "resnet20_cifar10:random" and rand.source_accuracy is None
    assert torch.equal(rand.network.conv1.weight, again.network.conv1.weight)  # seeded init
    assert not torch.equal(rand.network.conv1.weight, cand.network.conv1.weight)
    trunk = resolve_candidate("zoo:shufflenetv2_trunk")
    assert not trunk.head


def test_unknown_specs_list_the_valid_ones():
    with pytest.raises(CandidateError, match=r"unknown zoo model 'resnet21_cifar10'; valid names: resnet20_cifar10,"):
        resolve_candidate("zoo:resnet21_cifar10")
    with pytest.raises(CandidateError, match=r"unknown candidate spec 'hub:x'; use one of zoo:NAME"):
        resolve_candidate("hub:x")
    with pytest.raises(CandidateError, match=r"did you mean resnet18"):
        resolve_candidate("torchvision:resnet19")
    with pytest.raises(CandidateError, match=r"unique"):
        resolve_candidates(["zoo:simplecnn_cifar10", "zoo:simplecnn_cifar10"])


def test_wrong_sha_weights(tmp_path: Path, monkeypatch):
    (tmp_path / "resnet_cifar10").mkdir()
    (tmp_path / "resnet_cifar10" / "resnet20-12fca82f.th").write_bytes(b"tampered")
    monkeypatch.setenv("TGUIDE_MODELS", str(tmp_path))
    with pytest.raises(TGuideError, match=r"sha256 of .* expected 12fca82f"):
        resolve_candidate("zoo:resnet20_cifar10")


def test_torchvision_offline_only(tmp_path: Path, monkeypatch):
    cand = resolve_candidate("torchvision:mobilenet_v3_small")
    assert cand.layers[-1] == "avgpool" and cand.layers[0].startswith("features.")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CandidateError, match=r"not in the torch hub cache, expected '.*checkpoints/resnet18-f37072fd\.pth'"):
        resolve_candidate("torchvision:resnet18:IMAGENET1K_V1")
    with pytest.raises(CandidateError, match=r"no weights 'IMAGENET9K'"):
        resolve_candidate("torchvision:resnet18:IMAGENET9K")


def test_timm_missing_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(CandidateError, match=r"pip install timm"):
        resolve_candidate("timm:resnet18")


def test_state_dict_file_and_checkpoint(tmp_path: Path):
    zoo = resolve_candidate("zoo:simplecnn_cifar10")
    path = tmp_path / "mine.pt"
    torch.save({"module." + k: v for k, v in zoo.network.state_dict().items()}, path)
    cand = resolve_candidate(f"file:{path}#simplecnn_cifar10")
    assert cand.layers == zoo.layers and cand.fingerprint.startswith("sha256:")
    assert torch.equal(cand.network.conv1.weight, zoo.network.conv1.weight)
    with pytest.raises(CandidateError, match=r"name the architecture after '#'"):
        resolve_candidate(f"file:{path}")
    with pytest.raises(TGuideError, match=r"does not fit"):
        resolve_candidate(f"file:{path}#resnet20_cifar10")
    # a checkpoint written by tguide.fit: <run>/checkpoints/best.ckpt + <run>/config.yaml
    from tguide.nets.lenet import LeNet5

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  _target_: tguide.data.mnist.MNISTDataModule\nmodel:\n  net:\n"
                                     "    _target_: tguide.nets.lenet.LeNet5\n    num_classes: 10\n")
    net = LeNet5()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, run / "checkpoints" / "best.ckpt")
    cand = resolve_candidate(f"ckpt:{run / 'checkpoints' / 'best.ckpt'}")
    assert cand.head and cand.layers == ["pool2", "fc1", "fc2"]
    assert torch.equal(cand.network.fc3.weight, net.fc3.weight)
    assert cand.transform(Image.new("RGB", (16, 16))).shape == (1, 28, 28)
    with pytest.raises(CandidateError, match=r"no such checkpoint"):
        resolve_candidate(f"ckpt:{tmp_path / 'nope.ckpt'}")
