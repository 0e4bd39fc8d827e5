"""Data of the few-shot regime grid (:mod:`tguide.studies.fewshot.regimes`): one (source, target)
pair's cached source network, target images and class splits (:func:`load_pair`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tguide.studies.fewshot.regime_grid import OFFICE_VAL, TEST_DIGITS, VAL_ALPHABETS, VAL_DIGITS


@dataclass
class PairData:
    """Precomputed input tensors of one (source, target) pair."""

    net: nn.Module  # the module step 1/2 start from (LeNet, or ResNet-20 tail)
    head: str  # attribute name of the linear head
    src_x: Tensor
    src_y: Tensor
    pools: dict[str, tuple[Tensor, Tensor, list[int]]] = field(default_factory=dict)  # split -> (x, y, classes)
    last_block: Any = None  # `trainable` argument for variant c
    scratch: Callable[[], nn.Module] | None = None


class ResNetTail(nn.Module):
    """``layer3`` + pooling + head of a CIFAR ResNet, fed with precomputed ``layer2`` outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.layer3 = net.get_submodule("layer3")
        self.avgpool = net.get_submodule("avgpool")
        self.linear = net.get_submodule("linear")

    def embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.layer3(x)), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.embed(x))


@torch.no_grad()
def _resnet_trunk(net: nn.Module, x: Tensor, chunk: int = 250) -> Tensor:
    conv1, bn1, layer1, layer2 = (net.get_submodule(n) for n in ("conv1", "bn1", "layer1", "layer2"))
    out = []
    for i in range(0, x.shape[0], chunk):
        h = torch.relu(bn1(conv1(x[i : i + chunk])))
        out.append(layer2(layer1(h)))
    return torch.cat(out) if out else x.new_zeros((0, 32, 16, 16))


def _via_transform(images_uint8: Tensor, transform: Callable) -> Tensor:
    from PIL import Image

    arr = images_uint8.numpy()
    if arr.ndim == 4:
        arr = arr.transpose(0, 2, 3, 1)
    return torch.stack([transform(Image.fromarray(a)) for a in arr])


def _subsample(y: Tensor, per_class: int | None, classes: Iterable[int] | None = None) -> Tensor:
    """Indices: the first ``per_class`` samples of each class (all if None), restricted to ``classes``."""
    keep = []
    cls = torch.unique(y).tolist() if classes is None else list(classes)
    for c in cls:
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx if per_class is None else idx[:per_class])
    return torch.sort(torch.cat(keep)).values


def load_pair(source: str, target: str, *, root: str | None = None, quick: bool = False) -> PairData:
    """Source model, source data and the validation/test target pools of one pair (input tensors ready)."""
    from tguide.select.zoo import load_zoo_model, zoo_transform

    net, entry = load_zoo_model(source)
    per_class = 8 if quick else None
    n_src = 10 if quick else None
    if source == "lenet5_mnist":
        from tguide.data.mnist import load_mnist_test
        from tguide.data.mnist_m import load_mnist_m, mnist_indices_disjoint_from

        imgs, labels = load_mnist_test(root)
        _, _, used = load_mnist_m(root)
        keep = mnist_indices_disjoint_from(used, imgs.shape[0])
        sx = imgs[keep].float().div(255).unsqueeze(1)
        sy = labels[keep]
        sub = _subsample(sy, n_src)
        sx, sy = sx[sub], sy[sub]

        def prep(x: Tensor) -> Tensor:
            return x

        def _scratch() -> nn.Module:
            return type(net)(num_classes=10)

        scratch: Callable[[], nn.Module] | None = _scratch

        head, last = "linear2", ["net.linear1"]
    else:
        from tguide.data.cifar10 import load_cifar10

        imgs, labels, _ = load_cifar10(root)
        sub = _subsample(labels, n_src)
        tf = zoo_transform(entry)
        trunk = net

        def prep(x: Tensor) -> Tensor:
            return _resnet_trunk(trunk, x)

        sx, sy = prep(_via_transform(imgs[sub], tf)), labels[sub]
        net = ResNetTail(net)
        head, last = "linear", ["net.layer3.2"]
        scratch = None
    data = PairData(net=net.eval(), head=head, src_x=sx, src_y=sy, last_block=last, scratch=scratch)
    for split in ("val", "test"):
        if target == "usps":
            from tguide.data.usps import load_usps

            x, y = load_usps(root, train=(split == "val"), mode="pad")
            cls = list(VAL_DIGITS if split == "val" else TEST_DIGITS)
            idx = _subsample(y, per_class, cls)
            tx, ty = x[idx].float().div(255).unsqueeze(1), y[idx]
        elif target == "mnist_m":
            from tguide.data.mnist_m import load_mnist_m

            x, y, _ = load_mnist_m(root)
            cls = list(VAL_DIGITS if split == "val" else TEST_DIGITS)
            idx = _subsample(y, per_class, cls)
            tf = zoo_transform(entry, resize="stretch")
            tx, ty = _via_transform(x[idx], tf), y[idx]
        elif target == "omniglot":
            from tguide.data.omniglot import load_omniglot

            d = load_omniglot(root)
            val = set(d.classes_of(list(VAL_ALPHABETS)))
            cls = sorted(val) if split == "val" else [c for c in range(len(d.characters)) if c not in val]
            if quick:
                cls = cls[:6]
            idx = _subsample(d.labels, per_class, cls)
            tx, ty = d.images[idx].float().div(255).unsqueeze(1), d.labels[idx]
        elif target == "office31_webcam":
            from tguide.data.office31 import load_office31

            x, y, _ = load_office31("webcam", root, size=32)
            cls = list(OFFICE_VAL) if split == "val" else [c for c in range(31) if c not in OFFICE_VAL]
            idx = _subsample(y, per_class, cls)
            tx, ty = _via_transform(x[idx], zoo_transform(entry)), y[idx]
        else:
            raise ValueError(f"unknown target {target!r}")
        data.pools[split] = (prep(tx), ty, cls)
    return data


# ----------------------------------------------------------------------------- pieces
