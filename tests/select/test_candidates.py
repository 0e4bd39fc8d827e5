"""Candidate specs: zoo, torchvision, timm, tguide checkpoints, state-dict files; one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tguide.errors import TGuideError
from tguide.select.candidates import (Candidate, CandidateError, create_candidate, list_candidates, register_source,
                                      registered_sources, resolve_candidate, resolve_candidates)
from tguide.select.candidates import base as candidates_base


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
    with pytest.raises(CandidateError, match=r"unknown candidate spec 'hub:x'; use one of zoo:NAME") as err:
        resolve_candidate("hub:x")
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("(registered kinds: zoo, torchvision, timm, ckpt, file)")
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


def test_registry_of_sources_and_create_candidate_is_resolve_candidate():
    assert registered_sources() == ("zoo", "torchvision", "timm", "ckpt", "file")
    assert resolve_candidate is create_candidate
    cand = create_candidate("zoo:simplecnn_cifar10")
    assert cand.spec == "zoo:simplecnn_cifar10"  # create_candidate(cand.spec) makes it again
    again = create_candidate(cand.spec)
    assert torch.equal(again.network.conv1.weight, cand.network.conv1.weight) and again.fingerprint == cand.fingerprint
    assert create_candidate("zoo:simplecnn_cifar10:random").spec == "zoo:simplecnn_cifar10:random"


def test_register_source_custom_kind_and_its_errors(monkeypatch):
    monkeypatch.setattr(candidates_base, "_SOURCES", dict(candidates_base._SOURCES))
    seen = []

    def tiny(rest: str) -> Candidate:
        seen.append(rest)
        torch.manual_seed(len(rest))
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        return Candidate(f"tiny-{rest}", net, lambda im: torch.zeros(12), ["0"], True, "a test source")

    register_source("tiny", tiny, usage="tiny:NAME", lister=lambda: ["a", "b"])
    assert registered_sources()[-1] == "tiny"
    cand = create_candidate("tiny:a:b")
    assert seen == ["a:b"] and cand.name == "tiny-a:b" and cand.spec == "tiny:a:b"
    assert cand.fingerprint.startswith("state:") and cand.num_params == 12 * 3 + 3
    assert list_candidates("tiny:*") == ["tiny:a", "tiny:b"]
    with pytest.raises(CandidateError, match=r"already registered; pass replace=True"):
        register_source("tiny", tiny)
    register_source("tiny", tiny, replace=True)
    with pytest.raises(CandidateError, match=r"registered kinds: zoo, torchvision, timm, ckpt, file, tiny\)$"):
        create_candidate("tinny:a")
    with pytest.raises(CandidateError, match=r"without ':'"):
        register_source("a:b", tiny)
    with pytest.raises(CandidateError, match=r"must be callable"):
        register_source("nope", "not a function")  # type: ignore[arg-type]
    register_source("bad", lambda rest: "a string")  # type: ignore[arg-type, return-value]
    with pytest.raises(CandidateError, match=r"source 'bad' returned a str for 'bad:x', not a Candidate"):
        create_candidate("bad:x")


def test_list_candidates_zoo_first_and_patterns():
    from tguide.select.zoo import ZOO

    every = list_candidates()
    assert every[:len(ZOO)] == [f"zoo:{n}" for n in ZOO]  # zoo names first, in registry order
    assert "torchvision:resnet18" in every and not any(s.startswith(("ckpt:", "file:")) for s in every)
    assert list_candidates("zoo:*") == [f"zoo:{n}" for n in ZOO]
    hits = list_candidates("RESNET18")  # the name after KIND:, case-insensitive
    assert "torchvision:resnet18" in hits and all("resnet18" in h.lower() for h in hits)
    assert list_candidates("zoo:lenet5*") == ["zoo:lenet5_mnist", "zoo:lenet5_mnist_adv"]
    assert list_candidates("no-such-model-*") == []
