r"""A zoo of small source models for transferability benchmarks: spec → train → cache → load.

A :class:`SourceSpec` names everything that determines a source model: architecture
(``"lenet"``, ``"resnet"`` with a width, ``"mlp"``), source data (``"mnist"``, ``"mnist_m"``,
``"cifar10"``, ``"omniglot"``, ``"office31_amazon"``) with the classes kept, and the training
budget and seed. :class:`Zoo` trains a spec once and keeps its weights in a cache folder
(``~/.cache/tguide/zoo`` by default, or ``$TGUIDE_ZOO``, or the ``folder`` argument), in a
file named by the spec's content hash, so that a changed spec is a new model and a cached model
is never silently reused for a different spec.

Every model reads the same input: **3 × 32 × 32 float in [-1, 1]** (:func:`to_input`): grey
28×28 images are padded by 2 pixels and repeated on 3 channels, so that any source model can be
applied to any target. Each architecture is a sequence of named *stages* (:func:`stages`); the
representation after stage ``k`` (average-pooled over space if it is a map) is what the benchmark
scores, and :class:`Trunk` is the network cut after a stage, to fine-tune from that layer.

Disjointness (what :func:`source_data` guarantees): MNIST sources use MNIST test images with
index ≥ 3000 (the 3,000 MNIST-M images present are MNIST test images 0–2999); the MNIST-M
source uses MNIST-M files 1500–2999 (targets use 0–1499); CIFAR-10 and Omniglot sources use
their own classes / alphabets (targets use the others); the Office-31 source is the amazon
domain (targets use webcam).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tguide.errors import TGuideError
from tguide.models.tensor_fit import fit_tensors
from tguide.nets.lenet import LeNet5
from tguide.nets.mlp import MLP
from tguide.nets.resnet import SmallResNet

ARCHS = ("lenet", "resnet", "mlp")
SOURCES = ("mnist", "mnist_m", "cifar10", "omniglot", "office31_amazon")
FORMAT = 1
SIDE = 32

__all__ = [
    "ARCHS",
    "SOURCES",
    "SourceSpec",
    "Trunk",
    "Zoo",
    "build_net",
    "default_zoo_dir",
    "extract",
    "source_data",
    "stages",
    "to_input",
    "train_classifier",
]


@dataclass(frozen=True)
class SourceSpec:
    """What determines a source model. ``classes``: digits / CIFAR class ids / Omniglot alphabets
    kept (``()`` = all). ``held_out``: source samples kept out of training (OTCE's source side)."""

    name: str
    arch: str
    data: str
    width: int = 16
    classes: tuple[Any, ...] = ()
    epochs: int = 3
    lr: float = 2e-3
    batch: int = 64
    max_train: int = 3000
    held_out: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise TGuideError(f"SourceSpec {self.name!r}: arch must be one of {ARCHS}, got {self.arch!r}")
        if self.data not in SOURCES:
            raise TGuideError(f"SourceSpec {self.name!r}: data must be one of {SOURCES}, got {self.data!r}")
        if self.epochs < 1 or self.batch < 1 or self.max_train < 1 or self.held_out < 0 or self.width < 1:
            raise TGuideError(f"SourceSpec {self.name!r}: epochs, batch, max_train, width must be ≥ 1 and held_out ≥ 0")
        if not self.name or "/" in self.name or os.sep in self.name:
            raise TGuideError(f"SourceSpec name must be a non-empty file-safe string, got {self.name!r}")

    def key(self) -> str:
        """Content hash (12 hex) of every field: the cache file name."""
        blob = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- inputs and data


def to_input(images: Tensor) -> Tensor:
    """uint8 ``(N, H, W)`` or ``(N, C, H, W)`` (C ∈ {1, 3}, H, W ≤ 32) → float ``(N, 3, 32, 32)`` in [-1, 1].

    Grey images are repeated on 3 channels; smaller images are zero-padded (black border)
    symmetrically to 32×32.
    """
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, 1|3, H, W), got shape {tuple(images.shape)}.")
    h, w = images.shape[-2:]
    if h > SIDE or w > SIDE:
        raise ValueError(f"images must be at most {SIDE}×{SIDE}, got {h}×{w}; resize them first.")
    x = images.float() / 255.0
    top, left = (SIDE - h) // 2, (SIDE - w) // 2
    x = nn.functional.pad(x, (left, SIDE - w - left, top, SIDE - h - top))
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 2 - 1).contiguous()


def _subset(images: Tensor, labels: Tensor, keep: list[int] | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    if not keep:
        return images, labels
    mask = torch.isin(labels, torch.tensor(list(keep)))
    return images[mask], labels[mask]


def source_data(spec: SourceSpec, root: str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_held, y_held)`` for a spec: inputs ``(N, 3, 32, 32)``, labels 0..C-1.

    The images are shuffled with the spec's seed, then the first ``held_out`` form the held-out
    part and up to ``max_train`` of the rest the training part (see the module doc for which
    images each source may use).
    """
    if spec.data == "mnist":
        from tguide.data.mnist import load_mnist_test

        images, labels = load_mnist_test(root)
        images, labels = images[3000:], labels[3000:]  # MNIST-M files 0-2999 are MNIST test 0-2999
        images, labels = _subset(images, labels, [int(c) for c in spec.classes])
    elif spec.data == "mnist_m":
        from tguide.data.mnist_m import load_mnist_m

        images, labels, index = load_mnist_m(root)
        keep = index >= 1500  # targets use files 0-1499
        images, labels = _subset(images[keep], labels[keep], [int(c) for c in spec.classes])
    elif spec.data == "cifar10":
        from tguide.data.cifar10 import load_cifar10

        images, labels, _ = load_cifar10(root)
        images, labels = _subset(images, labels, [int(c) for c in spec.classes])
    elif spec.data == "omniglot":
        from tguide.data.omniglot import load_omniglot

        om = load_omniglot(root)
        chars = om.classes_of(list(spec.classes)) if spec.classes else list(range(len(om.characters)))
        mask = torch.isin(om.labels, torch.tensor(chars))
        images, labels = om.images[mask], om.labels[mask]
    else:  # office31_amazon
        from tguide.data.office31 import load_office31

        images, labels, _ = load_office31("amazon", root, size=SIDE)
        images, labels = _subset(images, labels, [int(c) for c in spec.classes])
    _, codes = torch.unique(labels, return_inverse=True)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(spec.seed))
    held, train = perm[: spec.held_out], perm[spec.held_out :][: spec.max_train]
    if train.numel() == 0:
        raise TGuideError(f"source {spec.name!r}: no training images left after holding out {spec.held_out}")
    x = to_input(images)
    return x[train], codes[train], x[held], codes[held]


# --------------------------------------------------------------------------- networks and stages


def build_net(spec: SourceSpec, num_classes: int) -> nn.Module:
    """The untrained network of a spec, reading ``(B, 3, 32, 32)``."""
    if spec.arch == "lenet":
        return LeNet5(num_classes=num_classes, in_channels=3, image_size=SIDE)
    if spec.arch == "resnet":
        return SmallResNet(num_classes=num_classes, in_channels=3, width=spec.width)
    return MLP(3 * SIDE * SIDE, hidden=(4 * spec.width * 4, 2 * spec.width * 4), num_classes=num_classes)


def stages(net: nn.Module) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """The named stages of a zoo network, in order; the last one's output is the penultimate layer."""
    if isinstance(net, LeNet5):
        return [
            ("conv1", lambda x: net.pool1(torch.relu(net.conv1(x)))),
            ("conv2", lambda x: net.pool2(torch.relu(net.conv2(x)))),
            ("fc1", lambda x: torch.relu(net.fc1(x.flatten(1)))),
            ("fc2", lambda x: torch.relu(net.fc2(x))),
        ]
    if isinstance(net, SmallResNet):
        return [(n, getattr(net, n)) for n in ("stem", "layer1", "layer2", "layer3")]
    if isinstance(net, MLP):
        out: list[tuple[str, Callable[[Tensor], Tensor]]] = []
        for k, n in enumerate(net.hidden_names):
            out.append((n, _relu_stage(getattr(net, n), flatten=k == 0)))
        return out
    raise TGuideError(f"stages() knows LeNet5, SmallResNet and MLP, got {type(net).__name__}")


def _relu_stage(layer: nn.Module, *, flatten: bool) -> Callable[[Tensor], Tensor]:
    """``x -> relu(layer(x))``, with ``x`` flattened to (B, -1) first when ``flatten``."""

    def stage(x: Tensor) -> Tensor:
        return torch.relu(layer(x.flatten(1) if flatten else x))

    return stage


def head_of(net: nn.Module) -> nn.Linear:
    """The classifier layer after the last stage."""
    return net.fc3 if isinstance(net, LeNet5) else net.fc if isinstance(net, SmallResNet) else net.head  # type: ignore[return-value]


def _pool(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x  # (B, C, H, W) -> (B, C)


def extract(net: nn.Module, x: Tensor, batch: int = 500) -> tuple[dict[str, Tensor], Tensor]:
    """Every stage's (pooled) features ``{name: (N, D)}`` and the source logits ``(N, Cs)``, eval mode."""
    was = net.training
    net.eval()
    feats: dict[str, list[Tensor]] = {n: [] for n, _ in stages(net)}
    logits: list[Tensor] = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            h = x[i : i + batch]
            for name, fn in stages(net):
                h = fn(h)
                feats[name].append(_pool(h))
            logits.append(head_of(net)(_pool(h)))
    net.train(was)
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(logits)


class Trunk(nn.Module):
    """The network up to and including stage ``layer``, average-pooled, then a new linear head.

    ``Trunk(net, layer, num_classes)`` shares (does not copy) ``net``'s parameters; pass a deep copy
    to fine-tune without touching the source model.
    """

    def __init__(self, net: nn.Module, layer: str, num_classes: int, dim: int) -> None:
        super().__init__()
        names = [n for n, _ in stages(net)]
        if layer not in names:
            raise ValueError(f"layer {layer!r} is not a stage of {type(net).__name__}; stages: {names}")
        self.net = net
        self.layer = layer
        self.depth = names.index(layer) + 1
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for _, fn in stages(self.net)[: self.depth]:
            x = fn(x)
        return self.head(_pool(x))


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float, batch: int, seed: int) -> float:
    """Adam + cross-entropy for ``steps`` minibatches drawn without replacement (reshuffled each pass):
    :func:`tguide.models.tensor_fit.fit_tensors`.

    Returns the mean training loss of the last 10 steps (for logging).
    """
    fit = fit_tensors(model, x, y, lr=lr, steps=int(steps), batch_size=batch, optimizer="adam", seed=seed)
    losses = fit.step_losses
    return float(sum(losses[-10:]) / max(1, len(losses[-10:])))


# --------------------------------------------------------------------------- the cached zoo


def default_zoo_dir() -> Path:
    """``$TGUIDE_ZOO`` if set, else ``~/.cache/tguide/zoo``."""
    env = os.environ.get("TGUIDE_ZOO")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tguide" / "zoo"


class Zoo:
    """Source models trained once and cached as ``<folder>/<name>-<key>.pt``.

    The file holds ``{"format", "spec", "num_classes", "state_dict", "meta"}``; ``meta`` records the
    training time (s) and held-out accuracy. Writes are atomic (temporary file + rename).
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, root: str | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_zoo_dir()
        self.root = root

    def path(self, spec: SourceSpec) -> Path:
        return self.folder / f"{spec.name}-{spec.key()}.pt"

    def has(self, spec: SourceSpec) -> bool:
        return self.path(spec).is_file()

    def save(self, spec: SourceSpec, net: nn.Module, num_classes: int, meta: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": FORMAT,
            "spec": dataclasses.asdict(spec),
            "num_classes": int(num_classes),
            "state_dict": net.state_dict(),
            "meta": dict(meta),
        }
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        torch.save(blob, tmp)
        os.replace(tmp, self.path(spec))
        return self.path(spec)

    def load(self, spec: SourceSpec) -> tuple[nn.Module, dict[str, Any]]:
        """The cached model (eval mode) and its meta; ``TGuideError`` if absent or for another spec."""
        path = self.path(spec)
        if not path.is_file():
            raise TGuideError(f"zoo model {spec.name!r} is not cached at {str(path)!r}; call Zoo.get(spec) to train it")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        stored = {k: (tuple(v) if isinstance(v, list) else v) for k, v in blob.get("spec", {}).items()}
        if blob.get("format") != FORMAT or stored != dataclasses.asdict(spec):
            raise TGuideError(f"zoo file {str(path)!r} holds a different spec or format; delete it to retrain")
        net = build_net(spec, int(blob["num_classes"]))
        net.load_state_dict(blob["state_dict"])
        net.eval()
        return net, dict(blob["meta"])

    def train(self, spec: SourceSpec) -> tuple[nn.Module, dict[str, Any]]:
        """Train a spec from scratch (``epochs`` passes over its training part) and cache it."""
        x, y, xh, yh = source_data(spec, self.root)
        num_classes = int(max(int(y.max()), int(yh.max()) if yh.numel() else 0)) + 1
        torch.manual_seed(spec.seed)
        net = build_net(spec, num_classes)
        start = time.perf_counter()
        steps = spec.epochs * math.ceil(x.shape[0] / spec.batch)
        loss = train_classifier(net, x, y, steps=steps, lr=spec.lr, batch=spec.batch, seed=spec.seed)
        seconds = time.perf_counter() - start
        net.eval()
        acc = float("nan")
        if xh.numel():
            with torch.no_grad():
                acc = float((net(xh).argmax(1) == yh).double().mean())
        meta = {
            "train_seconds": seconds,
            "held_out_acc": acc,
            "final_loss": loss,
            "num_train": int(x.shape[0]),
            "num_classes": num_classes,
        }
        self.save(spec, net, num_classes, meta)
        return net, meta

    def get(self, spec: SourceSpec) -> tuple[nn.Module, dict[str, Any]]:
        """Load the cached model, training and caching it first if needed."""
        return self.load(spec) if self.has(spec) else self.train(spec)
