"""Target tasks and the source zoo of the metric-quality benchmark (data only, no scoring).

Targets (inputs 3×32×32 in [-1, 1], :func:`tguide.studies.metric_quality.zoo.to_input`):

- ``usps``: USPS train split (28×28 "pad" mode, padded to 32), digits 0–9;
- ``mnist_m``: MNIST-M files 0–1499 (MNIST test images 0–1499, never used by a source);
- ``cifar10_5to9``: CIFAR-10 dog, frog, horse, ship, truck (sources use classes 0–4);
- ``office31_a2w``: Office-31 webcam, 31 classes, 32×32 (the source ``resnet16_amazon`` is amazon);
- ``omniglot_5way``: 5-way ``shots``-shot episodes from the Latin, Sanskrit and Tagalog alphabets
  (sources use the other five).

Every target is split once, with a fixed seed, into ``n_train`` labelled images (what the
scores see and fine-tuning trains on) and ``n_test`` images (ground-truth accuracy). An
Omniglot episode is its own split: support (train) and query (test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tguide.studies.metric_quality.zoo import SourceSpec, to_input

TARGETS = ("usps", "mnist_m", "cifar10_5to9", "office31_a2w", "omniglot_5way")
OMNI_SOURCE = ("Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean")
OMNI_TARGET = ("Latin", "Sanskrit", "Tagalog")
CIFAR_SRC = (0, 1, 2, 3, 4)
CIFAR_TGT = (5, 6, 7, 8, 9)

__all__ = ["DEFAULT_SOURCES", "QUICK_SOURCES", "TARGETS", "Task", "target_tasks"]

DEFAULT_SOURCES = (
    SourceSpec("lenet_mnist", "lenet", "mnist", epochs=3),
    SourceSpec("lenet_mnist04", "lenet", "mnist", classes=(0, 1, 2, 3, 4), epochs=3),
    SourceSpec("mlp_mnist", "mlp", "mnist", width=16, epochs=3),
    SourceSpec("resnet8_mnist", "resnet", "mnist", width=8, epochs=2, max_train=2000),
    SourceSpec("resnet16_mnistm", "resnet", "mnist_m", width=16, epochs=4, max_train=1000),
    SourceSpec("lenet_cifar04", "lenet", "cifar10", classes=CIFAR_SRC, epochs=6, max_train=1000),
    SourceSpec("mlp_cifar04", "mlp", "cifar10", classes=CIFAR_SRC, width=16, epochs=6, max_train=1000),
    SourceSpec("resnet8_cifar04", "resnet", "cifar10", classes=CIFAR_SRC, width=8, epochs=5, max_train=1000),
    SourceSpec("resnet16_cifar04", "resnet", "cifar10", classes=CIFAR_SRC, width=16, epochs=5, max_train=1000),
    SourceSpec("resnet32_cifar04", "resnet", "cifar10", classes=CIFAR_SRC, width=32, epochs=4, max_train=1000),
    SourceSpec("lenet_omniglot", "lenet", "omniglot", classes=OMNI_SOURCE, epochs=6, max_train=3000),
    SourceSpec("resnet16_amazon", "resnet", "office31_amazon", width=16, epochs=8, max_train=800, held_out=200),
)
QUICK_SOURCES = (
    SourceSpec("q_lenet_mnist", "lenet", "mnist", epochs=1, max_train=500, held_out=100),
    SourceSpec("q_mlp_cifar04", "mlp", "cifar10", classes=CIFAR_SRC, width=4, epochs=1, max_train=300, held_out=100),
)


@dataclass(frozen=True)
class Task:
    """One target task: training part (scored, fine-tuned on) and test part (ground truth)."""

    name: str
    x_train: Tensor  # (N, 3, 32, 32)
    y_train: Tensor  # (N,) 0..C-1
    x_test: Tensor
    y_test: Tensor

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def _split(name: str, images: Tensor, labels: Tensor, n_train: int, n_test: int, seed: int) -> Task:
    _, codes = torch.unique(labels, return_inverse=True)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    n_train = min(n_train, labels.numel() // 2)
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    x = to_input(images)
    return Task(name, x[tr], codes[tr], x[te], codes[te])


def target_tasks(
    name: str,
    root: str | None,
    n_train: int,
    n_test: int,
    episodes: int,
    ways: int = 5,
    shots: int = 5,
    queries: int = 15,
    seed: int = 0,
) -> list[Task]:
    """The task(s) of a target: one for a plain target, ``episodes`` for ``omniglot_5way``."""
    if name == "usps":
        from tguide.data.usps import load_usps

        x, y = load_usps(root, train=True)
        return [_split(name, x, y, n_train, n_test, seed)]
    if name == "mnist_m":
        from tguide.data.mnist_m import load_mnist_m

        x, y, index = load_mnist_m(root)
        keep = index < 1500
        return [_split(name, x[keep], y[keep], n_train, n_test, seed)]
    if name == "cifar10_5to9":
        from tguide.data.cifar10 import load_cifar10

        x, y, _ = load_cifar10(root)
        keep = torch.isin(y, torch.tensor(CIFAR_TGT))
        return [_split(name, x[keep], y[keep], n_train, n_test, seed)]
    if name == "office31_a2w":
        from tguide.data.office31 import load_office31

        x, y, _ = load_office31("webcam", root, size=32)
        return [_split(name, x, y, n_train, n_test, seed)]
    if name == "omniglot_5way":
        from tguide.data.omniglot import load_omniglot

        om = load_omniglot(root)
        chars = torch.tensor(om.classes_of(list(OMNI_TARGET)))
        gen = torch.Generator().manual_seed(seed)
        out = []
        for e in range(episodes):
            pick = chars[torch.randperm(chars.numel(), generator=gen)[:ways]]
            xs, ys, xq, yq = [], [], [], []
            for c, char in enumerate(pick.tolist()):
                idx = torch.nonzero(om.labels == char).flatten()
                idx = idx[torch.randperm(idx.numel(), generator=gen)]
                xs.append(om.images[idx[:shots]])
                xq.append(om.images[idx[shots : shots + queries]])
                ys += [c] * shots
                yq += [c] * min(queries, idx.numel() - shots)
            out.append(
                Task(
                    f"{name}/e{e}", to_input(torch.cat(xs)), torch.tensor(ys), to_input(torch.cat(xq)), torch.tensor(yq)
                )
            )
        return out
    raise ValueError(f"unknown target {name!r}; choose from {TARGETS}")
