"""The zoo benchmark's fixed protocol: candidate pool, input geometry, cached inputs, budget.

The protocol is fixed in advance and never looks at test data to make a choice.

**Candidates.** The zoo's checkpoints (:data:`tguide.select.zoo.ZOO`, loaded with
:func:`tguide.select.zoo.load_zoo_model`) in table order, then the random-init control
``random_resnet20``: the candidate ``zoo:resnet20_cifar10:random`` of
:mod:`tguide.select.candidates` (ResNet-20 CIFAR architecture, seeded random weights, ResNet-20's
input spec).

**Inputs.** Every image goes through the candidate's own transform
(:func:`tguide.select.zoo.zoo_transform`: channel conversion, resize policy, normalisation).
ImageNet models run at a reduced size (``Protocol.imagenet_size``, 96 px, for
EfficientNet-Lite0/1/2 and the ShuffleNetV2 trunk alike: their ``"crop"`` policy resizes the
shorter side to 96 and centre-crops 96×96). The transformed pixels are stored once per (target
split, input geometry) as uint8 (exact: the transform works on 8-bit PIL images) and normalised
on the fly. No data augmentation.

**Budget** (:data:`BUDGET_NOTE`): the record of how the budget of the shipped run was fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tguide.data.targets import Target, open_image

__all__ = [
    "BUDGET_NOTE",
    "DEFAULT_CACHE",
    "Inputs",
    "Member",
    "Protocol",
    "RANDOM_CONTROL",
    "RANDOM_CONTROL_SPEC",
    "cached_inputs",
    "geometry_key",
    "gt_entry",
    "normalise",
    "pool",
]

DEFAULT_CACHE = Path(os.environ.get("TGUIDE_GT_CACHE", "~/.cache/tguide/gt")).expanduser()
RANDOM_CONTROL = "random_resnet20"
RANDOM_CONTROL_SPEC = "zoo:resnet20_cifar10:random"

#: How the budget of the shipped run was fixed (a fact of that run, not a property of the library).
BUDGET_NOTE = (
    "Planned: 8 epochs, 40 train images per class (cifar10, mnist_m, usps), ImageNet models at 128 px. "
    "A timed one-epoch estimate per candidate (`python -m tguide.studies.zoo_benchmark groundtruth --estimate`, "
    "2 shared CPU cores, one thread) extrapolated the full 12 × 5 grid to ≈350 min, so, in this order and "
    "before any run of the benchmark: 4 epochs, 20 train images per class on the count-split targets, "
    "ImageNet models at 96 px (estimate ≈95 min). Nothing was tuned on test."
)


@dataclass(frozen=True)
class Protocol:
    """The fixed ground-truth protocol (see :mod:`tguide.studies.zoo_benchmark.groundtruth`)."""

    epochs: int = 4
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-3, 1e-2)
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seeds: tuple[int, ...] = (0, 1, 2)
    imagenet_size: int = 96
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    eval_batch: int = 200


@dataclass(frozen=True)
class Member:
    """One network of the benchmark's pool: its table name, the candidate spec that makes it
    (``zoo:NAME`` or ``zoo:NAME:random``) and its zoo entry (input size set by :func:`gt_entry`)."""

    name: str
    spec: str
    entry: Any
    root: str | None = None

    def build(self) -> nn.Module:
        """A fresh network (pretrained weights or the seeded random init), eval mode."""
        if self.spec.endswith(":random"):
            from tguide.select.candidates import resolve_candidate

            return resolve_candidate(self.spec).network.eval()
        from tguide.select.zoo import load_zoo_model

        return load_zoo_model(self.spec.split(":", 1)[1], root=self.root)[0]


def gt_entry(entry: Any, imagenet_size: int | None) -> Any:
    """``entry`` with its input size set to ``imagenet_size`` when it is an ImageNet model."""
    if imagenet_size is None or entry.source != "imagenet":
        return entry
    return dataclasses.replace(entry, input=dataclasses.replace(entry.input, size=int(imagenet_size)))


def pool(
    names: Sequence[str] | None = None,
    *,
    imagenet_size: int | None = Protocol.imagenet_size,
    random_control: bool = True,
    root: str | os.PathLike[str] | None = None,
) -> list[Member]:
    """The zoo's models (``names``, default all, in table order), then the random-init control."""
    from tguide.select.zoo import ZOO

    root_s = None if root is None else str(root)
    out = [
        Member(n, f"zoo:{n}", gt_entry(ZOO[n], imagenet_size), root_s)
        for n in (list(ZOO) if names is None else [n for n in names if n != RANDOM_CONTROL])
    ]
    if random_control and (names is None or RANDOM_CONTROL in names):
        base = ZOO[RANDOM_CONTROL_SPEC.split(":")[1]]
        out.append(
            Member(
                RANDOM_CONTROL,
                RANDOM_CONTROL_SPEC,
                dataclasses.replace(base, name=RANDOM_CONTROL, source="random"),
                root_s,
            )
        )
    return out


# ----------------------------------------------------------------------------- inputs


def geometry_key(entry: Any) -> str:
    """What fixes the uint8 pixels of an input: channels, size, resize policy and, for a centre
    crop, ``crop_pct`` (not mean/std). ``crop_pct = 1`` adds nothing, so older cache names stay valid."""
    s = entry.input
    key = f"c{s.channels}_s{s.size}_{s.resize}" + (f"{s.inner}" if s.inner else "")
    return key + (f"_p{s.crop_pct:g}" if s.resize == "crop" and s.crop_pct != 1.0 else "")


def _raw_transform(entry: Any) -> Callable[[Any], Tensor]:
    from tguide.select.zoo import zoo_transform

    spec = entry.input
    raw = dataclasses.replace(
        entry, input=dataclasses.replace(spec, mean=(0.0,) * spec.channels, std=(1.0,) * spec.channels)
    )
    return zoo_transform(raw)


def _split_digest(target: Target) -> str:
    h = hashlib.sha256(target.description.encode())
    for part in ("train", "val", "test"):
        for item, y in target.split(part):
            h.update(f"{part}:{item if isinstance(item, str) else 'pil'}:{y};".encode())
    return h.hexdigest()[:12]


def cached_inputs(
    target: Target, entry: Any, cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train"|"val"|"test": (uint8 (N, C, S, S), int64 (N,))}`` for ``entry``'s input geometry,
    read from / written to ``cache_dir`` (``None``: no cache)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / f"{target.name}_{_split_digest(target)}_{geometry_key(entry)}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
    tf = _raw_transform(entry)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for part in ("train", "val", "test"):
        items = target.split(part)
        x = torch.stack([(tf(open_image(it)) * 255).round().to(torch.uint8) for it, _ in items])
        out[part] = (x, torch.tensor([y for _, y in items], dtype=torch.int64))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out


def normalise(x_u8: Tensor, entry: Any) -> Tensor:
    """uint8 pixels → the model's normalised float input."""
    s = entry.input
    mean = torch.tensor(s.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(s.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x_u8.float() / 255.0 - mean) / std


class Inputs:
    """Cached uint8 inputs per (target, input geometry), the ``keep`` most recent held in memory."""

    def __init__(
        self, splits: dict[str, Target], cache: Path | None, keep: int = 3, log: Callable[[str], None] | None = None
    ) -> None:
        self.splits, self.cache, self.keep, self.log = splits, cache, keep, log
        self.mem: OrderedDict[tuple[str, str], dict[str, tuple[Tensor, Tensor]]] = OrderedDict()

    def get(self, target: str, member: Member) -> dict[str, tuple[Tensor, Tensor]]:
        import time

        key = (target, geometry_key(member.entry))
        if key not in self.mem:
            t0 = time.perf_counter()
            self.mem[key] = cached_inputs(self.splits[target], member.entry, self.cache)
            dt = time.perf_counter() - t0
            if dt > 2 and self.log is not None:
                self.log(f"inputs {target} {key[1]}: {dt:.1f}s")
            while len(self.mem) > self.keep:
                self.mem.popitem(last=False)
        self.mem.move_to_end(key)
        return self.mem[key]
