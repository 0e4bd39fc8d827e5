"""Data of the few-shot protocol (:mod:`tguide.studies.fewshot.protocol`): the source LeNet-5
trained (and cached) on MNIST digits, and the target pools (USPS, Omniglot) episodes are drawn from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from tguide.data.mnist import load_mnist_test, normalise, random_affine, split_indices
from tguide.errors import TGuideError
from tguide.models.tensor_fit import fit_tensors
from tguide.nets.lenet import LeNet5
from tguide.select.pretune import accuracy

TARGETS = ("usps", "omniglot")

__all__ = ["TARGETS", "load_or_train_source", "source_data", "target_pool", "train_source"]


# ----------------------------------------------------------------------------- source model


def source_data(digits: Sequence[int], root: str | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised MNIST (10k test set) source digits: train part and held-out part (8/2 split)."""
    images, labels = load_mnist_test(root)
    keep = torch.isin(labels, torch.tensor(list(digits)))
    images, labels = images[keep], labels[keep]
    train, held = split_indices(labels, (8, 2))
    x = normalise(images)
    return x[train], labels[train], x[held], labels[held]


def train_source(
    x: Tensor, y: Tensor, *, epochs: int = 12, lr: float = 1e-3, batch: int = 128, augment: bool = True, seed: int = 0
) -> LeNet5:
    """LeNet-5 (10 outputs, digit labels) trained with Adam and cross-entropy on ``x (N,1,28,28)``."""
    torch.manual_seed(int(seed))
    net = LeNet5(num_classes=10)
    transform = (lambda xb: random_affine(xb, 10.0, 0.08, 0.08)) if augment else None
    fit_tensors(
        net, x, y, lr=lr, epochs=int(epochs), batch_size=batch, optimizer="adam", seed=seed, transform=transform
    )
    net.eval()
    return net


def load_or_train_source(
    path: str | Path,
    digits: Sequence[int],
    *,
    epochs: int = 12,
    lr: float = 1e-3,
    batch: int = 128,
    seed: int = 0,
    root: str | None = None,
) -> tuple[LeNet5, dict]:
    """The cached source LeNet at ``path`` if its settings match, else train it and save it there.

    Returns the network and its info (settings, held-out MNIST accuracy, training seconds).
    """
    kept = sorted(int(d) for d in digits)
    meta = {
        "digits": kept,
        "epochs": int(epochs),
        "lr": float(lr),
        "batch": int(batch),
        "seed": int(seed),
        "data": "MNIST 10k test set, train part (8 of 10)",
    }
    path = Path(path)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("meta") == meta:
            net = LeNet5(num_classes=10)
            net.load_state_dict(saved["state_dict"])
            net.eval()
            return net, {**meta, **saved["info"], "reused": str(path)}
    xs, ys, xh, yh = source_data(kept, root)
    t0 = time.perf_counter()
    net = train_source(xs, ys, epochs=epochs, lr=lr, batch=batch, seed=seed)
    info = {
        "train_seconds": time.perf_counter() - t0,
        "heldout_accuracy": accuracy(net, xh, yh),
        "n_train": int(xs.shape[0]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "info": info, "state_dict": net.state_dict()}, path)
    return net, {**meta, **info, "reused": None}


# ----------------------------------------------------------------------------- target data


def target_pool(
    target: str,
    split: str,
    *,
    root: str | None = None,
    classes: Sequence[int] | None = None,
    val_alphabets: Sequence[str] = (),
    usps_mode: str = "pad",
) -> tuple[Tensor, Tensor, list[int]]:
    """Normalised target images ``(N,1,28,28)``, labels, and the class ids episodes may draw.

    ``usps``: split ``"val"`` = USPS train file, ``"test"`` = USPS test file; classes (default
    7, 8, 9). ``omniglot``: split ``"val"`` = characters of ``val_alphabets``, ``"test"`` = the
    other alphabets (no character in both).
    """
    if split not in ("val", "test"):
        raise TGuideError(f"fewshot.split must be 'val' or 'test', got {split!r}")
    if target == "usps":
        from tguide.data.usps import load_usps

        images, labels = load_usps(root, train=(split == "val"), mode=usps_mode)
        pool = list(classes) if classes is not None else [7, 8, 9]
    elif target == "omniglot":
        from tguide.data.omniglot import load_omniglot

        data = load_omniglot(root)
        images, labels = data.images, data.labels
        val = set(data.classes_of(list(val_alphabets)))
        if not val:
            raise TGuideError("fewshot.val_alphabets is empty: hold out at least one Omniglot alphabet")
        pool = sorted(val) if split == "val" else [c for c in range(len(data.characters)) if c not in val]
    else:
        raise TGuideError(f"fewshot.target must be one of {TARGETS}, got {target!r}")
    return normalise(images), labels, pool
