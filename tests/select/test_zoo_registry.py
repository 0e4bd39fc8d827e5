"""The pretrained zoo registry (tguide.select.zoo) against the real checkpoints and the real data.

Accuracy checks run on small deterministic subsets and compare with the "measured here" column
of ``shared/models/README.md`` within a binomial tolerance: ``|acc − p| ≤ 3 · sqrt(p (1 − p) / n)``
(≈ 99.7% of subsets of size n would pass if the model reproduces p). The ``slow`` tests rerun the
README's full sets (3,000 CIFAR-10 JPEGs, 10,000 MNIST, 2,007 USPS padded and stretched), which must agree to
within one image. (This file is not named test_zoo.py: tests/studies/metric_quality/test_zoo.py has that basename.)
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tguide.data.cifar10 import load_cifar10
from tguide.data.mnist import load_mnist_test
from tguide.errors import TGuideError
from tguide.select import checkpoints as checkpoints_mod
from tguide.select import zoo as zoo_mod
from tguide.select.zoo import ZOO, ZooEntry, file_sha256, load_zoo_model, models_root as zoo_models_root, zoo_transform

NAMES = ("resnet20_cifar10", "resnet32_cifar10", "resnet44_cifar10", "resnet56_cifar10", "simplecnn_cifar10",
         "lenet5_mnist", "lenet5_mnist_adv", "shufflenetv2_trunk", "efficientnet_lite0", "efficientnet_lite1",
         "efficientnet_lite2", "mobilenetv1_x025", "mcunet_in2", "mcunet_in3", "proxyless_w025", "proxyless_w03")
CIFAR = NAMES[:5]
# ImageNet-1k indices: 673 "mouse, computer mouse", 508 "computer keyboard, keypad"
IMAGENET_TARGET = {"mouse": 673, "keyboard": 508}



@pytest.fixture(autouse=True)
def _models_env(monkeypatch: pytest.MonkeyPatch, models_root: Path) -> None:
    monkeypatch.setenv("TGUIDE_MODELS", str(models_root))


def _tolerance(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


def _normalise(x_uint8: torch.Tensor, entry: ZooEntry) -> torch.Tensor:
    c = entry.input.channels
    mean = torch.tensor(entry.input.mean).view(1, c, 1, 1)
    std = torch.tensor(entry.input.std).view(1, c, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (pred == y).float().mean().item()


def _webcam(data_root: Path) -> Path:
    return data_root / "domains" / "office31" / "webcam"


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_fields() -> None:
    assert tuple(ZOO) == NAMES == zoo_mod.zoo_names()
    for name, e in ZOO.items():
        assert e.name == name and len(e.sha256) == 64 and e.path.count("/") == 1
        assert e.has_head == (e.num_classes is not None)
        assert e.input.channels == (1 if e.source == "mnist" else 3)
        assert e.layers and callable(e.builder)
        tag = re.search(r"-([0-9a-f]{8})\.", e.path)  # file names that carry a hash carry its first 8 digits
        assert tag is None or e.sha256.startswith(tag.group(1)), name
    with pytest.raises(Exception):
        ZOO["lenet5_mnist"].name = "x"  # type: ignore[misc]  # frozen


def test_models_root_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TGUIDE_MODELS", str(tmp_path))
    assert zoo_models_root() == tmp_path.resolve()
    assert zoo_models_root(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("TGUIDE_MODELS")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert zoo_models_root() == (tmp_path / "shared" / "models").resolve()


def test_register_zoo_model_with_a_loader_and_get_zoo_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from tguide.select.candidates import create_candidate
    from tguide.select.zoo import get_zoo_entry, register_zoo_model

    monkeypatch.setattr(zoo_mod, "ZOO", dict(ZOO))  # a private copy: the test's entries vanish afterwards
    base = get_zoo_entry("resnet20_cifar10")
    assert base is zoo_mod.ZOO["resnet20_cifar10"] and base.load is None
    torch.manual_seed(1)
    trained = base.builder()  # stands in for a network a study trained and cached
    calls = []

    def load() -> torch.nn.Module:
        calls.append(1)
        return trained

    entry = dataclasses.replace(base, name="resnet20_study", path="", sha256="", load=load)
    assert register_zoo_model(entry) is entry and get_zoo_entry("resnet20_study") is entry
    assert tuple(zoo_mod.ZOO)[-1] == "resnet20_study"
    model, got = load_zoo_model("resnet20_study", root="/nonexistent")  # no file is read
    assert model is trained and got is entry and not model.training and calls == [1]
    cand = create_candidate("zoo:resnet20_study")
    assert torch.equal(cand.network.conv1.weight, trained.conv1.weight) and cand.spec == "zoo:resnet20_study"
    assert cand.fingerprint.startswith("state:") and "built in process" in cand.provenance
    rand = create_candidate("zoo:resnet20_study:random")  # the builder still gives the random control
    assert not torch.equal(rand.network.conv1.weight, trained.conv1.weight)
    with pytest.raises(TGuideError, match="'resnet20_study' is already registered; pass replace=True"):
        register_zoo_model(entry)
    assert register_zoo_model(dataclasses.replace(entry, params=1), replace=True).params == 1
    with pytest.raises(TGuideError, match="needs a checkpoint .* or a load=callable"):
        register_zoo_model(dataclasses.replace(base, name="nofile", path="", sha256=""))
    with pytest.raises(TGuideError, match="unknown zoo model 'nope'; valid names: resnet20_cifar10.*resnet20_study"):
        get_zoo_entry("nope")
    bad = dataclasses.replace(entry, name="broken", load=lambda: "not a module")
    register_zoo_model(bad)
    with pytest.raises(TGuideError, match="'broken': load\\(\\) returned a str, not an nn.Module"):
        load_zoo_model("broken")


# ---------------------------------------------------------------------------- bad inputs


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(TGuideError, match="unknown zoo model 'resnet18'.*resnet20_cifar10.*efficientnet_lite2"):
        load_zoo_model("resnet18")
    with pytest.raises(TGuideError, match="unknown"):
        zoo_transform("nope")


def test_missing_file_names_path_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TGUIDE_MODELS", str(tmp_path))
    with pytest.raises(TGuideError) as err:
        load_zoo_model("lenet5_mnist")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "lenet5_mnist" / "mnist_lenet5_clntrained.pt") in msg
    assert "TGUIDE_MODELS" in msg


def _put(tmp_path: Path, name: str, obj: object | None = None, raw: bytes | None = None) -> Path:
    path = tmp_path / ZOO[name].path
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    return path


def test_wrong_sha256_names_expected_and_actual(tmp_path: Path) -> None:
    path = _put(tmp_path, "lenet5_mnist", raw=b"not the checkpoint")
    with pytest.raises(TGuideError) as err:
        load_zoo_model("lenet5_mnist", root=tmp_path)
    msg = str(err.value)
    assert ZOO["lenet5_mnist"].sha256 in msg and file_sha256(path) in msg and "\n" not in msg
    with pytest.raises(TGuideError, match="cannot load"):  # unverified, still not loadable
        load_zoo_model("lenet5_mnist", root=tmp_path, verify=False)


def test_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    from tguide.nets.captum_cnn import CaptumCifarCNN

    _put(tmp_path, "lenet5_mnist", CaptumCifarCNN().state_dict())
    with pytest.raises(TGuideError) as err:
        load_zoo_model("lenet5_mnist", root=tmp_path, verify=False)
    msg = str(err.value)
    assert "missing key(s) [linear1.weight" in msg and "unexpected key(s) [fc1.weight" in msg
    assert "shape mismatch" in msg and "conv1.weight (6, 3, 5, 5) vs (32, 1, 3, 3)" in msg and "\n" not in msg
    _put(tmp_path, "lenet5_mnist", [1, 2, 3])
    with pytest.raises(TGuideError, match="not a state dict"):
        load_zoo_model("lenet5_mnist", root=tmp_path, verify=False)
    # the ResNet prefix rule: a file without the 'module.' prefix and the dict wrapper loads too
    _put(tmp_path, "resnet20_cifar10", ZOO["resnet20_cifar10"].builder().state_dict())
    model, _ = load_zoo_model("resnet20_cifar10", root=tmp_path, verify=False)
    assert not model.training


def test_sha256_is_cached_per_path_mtime_size(tmp_path: Path, models_root: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    digest = file_sha256(f)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    st = f.stat()
    assert checkpoints_mod._HASH_CACHE[(str(f.resolve()), st.st_mtime_ns, st.st_size)] == digest
    f.write_bytes(b"abcd")
    assert file_sha256(f) != digest  # size changed: hashed again
    load_zoo_model("simplecnn_cifar10")
    real = (models_root / ZOO["simplecnn_cifar10"].path).resolve()
    assert any(k[0] == str(real) for k in checkpoints_mod._HASH_CACHE)


# ---------------------------------------------------------------------------- transforms


def test_zoo_transform_modes_and_policies() -> None:
    rgb = Image.new("RGB", (50, 30), (255, 0, 0))
    for mode in ("L", "RGB", "RGBA", "P", "1"):
        for name, c, s in (("efficientnet_lite0", 3, 224), ("lenet5_mnist", 1, 28), ("resnet20_cifar10", 3, 32)):
            x = zoo_transform(name)(rgb.convert(mode))
            assert x.shape == (c, s, s) and x.dtype == torch.float32
    white = zoo_transform("efficientnet_lite2")(Image.new("RGB", (300, 300), (255, 255, 255)))
    assert white.shape == (3, 260, 260) and torch.allclose(white, torch.ones(1))  # (255 − 127) / 128
    digit = Image.new("L", (16, 16), 255)
    padded = zoo_transform("lenet5_mnist")(digit)[0]
    assert padded[:4].abs().sum() == 0 and padded[-4:].abs().sum() == 0 and padded[:, :4].abs().sum() == 0
    assert torch.allclose(padded[4:24, 4:24], torch.ones(1))  # 20×20 box, MNIST layout
    assert torch.allclose(zoo_transform("lenet5_mnist", resize="stretch")(digit), torch.ones(1))
    with pytest.raises(TGuideError, match="resize"):
        zoo_transform("lenet5_mnist", resize="zoom")


# ---------------------------------------------------------------------------- accuracy on real data


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_accuracy_on_200_images(name: str, data_root: Path) -> None:
    x, y, _ = load_cifar10(data_root)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:20] for c in range(10)])  # first 20 per class
    model, entry = load_zoo_model(name)
    acc = _accuracy(model, _normalise(x[idx], entry), y[idx])
    assert entry.measured_acc is not None
    print(f"{name}: {acc:.3f} on 200 (README {entry.measured_acc:.4f} on 3,000)")
    assert abs(acc - entry.measured_acc) <= _tolerance(entry.measured_acc, 200)
    assert entry.reported_acc is None or acc < entry.reported_acc  # JPEG copy costs accuracy


@pytest.mark.parametrize("name", ("lenet5_mnist", "lenet5_mnist_adv"))
def test_lenet_mnist_and_usps_on_200_images(name: str, data_root: Path) -> None:
    from torchvision.datasets import USPS

    images, labels = load_mnist_test(data_root)
    model, entry = load_zoo_model(name)
    acc = _accuracy(model, _normalise(images[:200].unsqueeze(1), entry), labels[:200])
    print(f"{name}: MNIST {acc:.3f} on 200 (README {entry.measured_acc})")
    assert entry.measured_acc is not None and abs(acc - entry.measured_acc) <= _tolerance(entry.measured_acc, 200)
    usps = USPS(str(data_root / "usps"), train=False, download=False)
    pils, ys = zip(*(usps[i] for i in range(200)))
    y = torch.tensor(ys)
    accs = {p: _accuracy(model, torch.stack([zoo_transform(entry, p)(im) for im in pils]), y) for p in ("pad", "stretch")}
    print(f"{name}: USPS {accs} on 200")
    readme = {"lenet5_mnist": (0.9332, 0.7110), "lenet5_mnist_adv": (0.8710, 0.7170)}[name]
    assert abs(accs["pad"] - readme[0]) <= _tolerance(readme[0], 200)
    assert abs(accs["stretch"] - readme[1]) <= _tolerance(readme[1], 200)
    assert accs["pad"] > accs["stretch"] + 0.1


@pytest.mark.parametrize("name", ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"))
def test_efficientnet_lite_imagenet_classes_on_office31(name: str, data_root: Path) -> None:
    model, entry = load_zoo_model(name)
    tf = zoo_transform(entry)
    for cls, target in IMAGENET_TARGET.items():
        files = sorted((_webcam(data_root) / cls).glob("*.jpg"))[:5]
        with torch.no_grad():
            logits = model(torch.stack([tf(Image.open(f)) for f in files]))
        assert logits.shape == (5, 1000)
        top5 = logits.topk(5, dim=1).indices
        hits5 = int((top5 == target).any(1).sum())
        hits1 = int((top5[:, 0] == target).sum())
        print(f"{name} {cls}: top-1 {hits1}/5, top-5 {hits5}/5")
        assert hits5 >= 4
        if cls == "mouse":  # README: Lite0 top-1 30/30 on all webcam mice
            assert hits1 >= 4


def test_shufflenet_trunk_features_beat_random_weights(data_root: Path) -> None:
    model, entry = load_zoo_model("shufflenetv2_trunk")
    tf = zoo_transform(entry)
    classes = sorted(p.name for p in _webcam(data_root).iterdir() if p.is_dir())
    files = [(f, c) for c, n in enumerate(classes) for f in sorted((_webcam(data_root) / n).glob("*.jpg"))[:5]]
    x = torch.stack([tf(Image.open(f)) for f, _ in files])
    y = torch.tensor([c for _, c in files])

    def loo_1nn(net: torch.nn.Module) -> float:
        with torch.no_grad():
            feats = torch.cat([net(x[i:i + 64]) for i in range(0, len(x), 64)])
        assert feats.shape == (len(files), 192)
        d = torch.cdist(feats, feats)
        d.fill_diagonal_(float("inf"))
        return (y[d.argmin(1)] == y).float().mean().item()

    torch.manual_seed(0)
    trained, random = loo_1nn(model), loo_1nn(entry.builder().eval())
    print(f"shufflenetv2_trunk 1-NN LOO on {len(files)} webcam images: trained {trained:.3f}, random {random:.3f}")
    assert len(files) == 155 and trained >= 0.75 and trained >= random + 0.4


# ---------------------------------------------------------------------------- full README sets (slow)


@pytest.mark.slow
def test_full_sets_reproduce_readme(data_root: Path) -> None:
    x, y, _ = load_cifar10(data_root)
    for name in CIFAR:
        model, entry = load_zoo_model(name)
        acc = _accuracy(model, _normalise(x, entry), y)
        assert entry.measured_acc is not None and abs(acc - entry.measured_acc) <= 1 / 3000 + 1e-9, (name, acc)
    images, labels = load_mnist_test(data_root)
    for name in ("lenet5_mnist", "lenet5_mnist_adv"):
        model, entry = load_zoo_model(name)
        acc = _accuracy(model, _normalise(images.unsqueeze(1), entry), labels)
        assert entry.measured_acc is not None and abs(acc - entry.measured_acc) <= 1e-4 + 1e-9, (name, acc)
    from torchvision.datasets import USPS

    usps = USPS(str(data_root / "usps"), train=False, download=False)
    pils, ys = zip(*(usps[i] for i in range(len(usps))))
    y_usps = torch.tensor(ys)
    readme = {("lenet5_mnist", "pad"): 0.9332, ("lenet5_mnist", "stretch"): 0.7110,
              ("lenet5_mnist_adv", "pad"): 0.8710, ("lenet5_mnist_adv", "stretch"): 0.7170}
    for (name, policy), expected in readme.items():
        model, entry = load_zoo_model(name)
        acc = _accuracy(model, torch.stack([zoo_transform(entry, policy)(im) for im in pils]), y_usps)
        assert abs(acc - expected) <= 1 / 2007, (name, policy, acc)
