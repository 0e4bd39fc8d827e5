"""The ImageNet-only pool of the zoo benchmark: 9 ImageNet-1k checkpoints and one random control.

The published setting of the transferability papers (Shao et al., ECCV 2022; Wang et al., CVPR
2023; Gholami et al., ICCV 2023; Singh et al. 2025) ranks many models pretrained on one source
(ImageNet) on one target. The mixed pool of :func:`tguide.studies.zoo_benchmark.protocol.pool`
cannot test that (MNIST, CIFAR and ImageNet sources), so this module fixes a second pool:

**Members.** Every zoo entry with ``source == "imagenet"`` in table order (EfficientNet-Lite0/1/2,
the ShuffleNetV2 trunk, MobileNetV1 ×0.25, MCUNet-in2/in3, ProxylessNAS ×0.25/×0.3), then the
random-weight control :data:`CONTROL` = ``zoo:mcunet_in3:random`` (MCUNet-in3's architecture and
input spec, seeded random init from :mod:`tguide.select.candidates`; an ImageNet architecture, so
the floor is measured in the same family as the pool).

**Inputs.** The mixed benchmark's 96-px geometry for every member (:func:`imagenet_entry`): the
shorter side resized to 96, a centre 96×96 crop (``crop_pct = 1``), each model's own
normalisation. These are exactly the pixels of the mixed benchmark's shipped ImageNet rows (its
run predates the per-model ``crop_pct`` of the zoo), so those rows are reused, and every member
of this pool reads the same pixels. The uint8 inputs are cached under :data:`CACHE`, apart from
the mixed run's cache (whose files were written before the cache key recorded ``crop_pct``).

**Source-accuracy prior** (:func:`source_prior`): the reported ImageNet top-1 of each checkpoint
(44.9–77.6% where reported). The ShuffleNetV2 trunk has none: it gets
:data:`~tguide.studies.zoo_benchmark.scoring.SHUFFLENET_PRIOR` (0.60, the published top-1 of the
full ShuffleNetV2 0.5×, Ma et al., ECCV 2018, the trunk's origin), as in the mixed benchmark: an
assumption, stated wherever the prior is reported. The random control gets 0.001 (chance on the
1000 ImageNet classes). **#params**: the zoo entry's parameter count.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tguide.errors import TGuideError
from tguide.studies.zoo_benchmark.protocol import DEFAULT_CACHE, Member, Protocol
from tguide.studies.zoo_benchmark.scoring import SHUFFLENET_PRIOR

__all__ = [
    "CACHE",
    "CONTROL",
    "CONTROL_PRIOR",
    "CONTROL_SPEC",
    "imagenet_entry",
    "imagenet_names",
    "imagenet_pool",
    "param_count",
    "source_prior",
]

CONTROL = "random_mcunet_in3"
CONTROL_SPEC = "zoo:mcunet_in3:random"
CONTROL_PRIOR = 0.001  # chance on ImageNet-1k
CACHE = DEFAULT_CACHE.parent / "gt_imagenet_pool"


def imagenet_names() -> list[str]:
    """The zoo's ImageNet-1k checkpoints, in table order."""
    from tguide.select.zoo import ZOO

    return [n for n, e in ZOO.items() if e.source == "imagenet"]


def imagenet_entry(entry: Any, size: int = Protocol.imagenet_size) -> Any:
    """``entry`` at ``size`` px with the mixed benchmark's geometry: shorter side to ``size``, centre crop."""
    spec = dataclasses.replace(entry.input, size=int(size), resize="crop", crop_pct=1.0)
    return dataclasses.replace(entry, input=spec)


def imagenet_pool(
    names: Sequence[str] | None = None,
    *,
    size: int = Protocol.imagenet_size,
    control: bool = True,
    root: str | os.PathLike[str] | None = None,
) -> list[Member]:
    """The ImageNet-only pool: ``names`` (default every ImageNet checkpoint) then :data:`CONTROL`."""
    from tguide.select.zoo import ZOO

    allowed = imagenet_names()
    wanted = allowed if names is None else [n for n in names if n != CONTROL]
    bad = [n for n in wanted if n not in allowed]
    if bad:
        raise TGuideError(f"not ImageNet checkpoints of the zoo: {bad}; the ImageNet pool holds {allowed}")
    root_s = None if root is None else str(Path(root))
    out = [Member(n, f"zoo:{n}", imagenet_entry(ZOO[n], size), root_s) for n in wanted]
    if control and (names is None or CONTROL in names):
        base = ZOO[CONTROL_SPEC.split(":")[1]]
        entry = dataclasses.replace(imagenet_entry(base, size), name=CONTROL, source="random")
        out.append(Member(CONTROL, CONTROL_SPEC, entry, root_s))
    return out


def source_prior(member: Member) -> float:
    """The reported ImageNet top-1 (ShuffleNetV2 trunk: 0.60, assumed; random control: chance)."""
    if member.entry.source == "random":
        return CONTROL_PRIOR
    acc = member.entry.reported_acc
    return float(acc) if acc is not None else SHUFFLENET_PRIOR


def param_count(member: Member) -> float:
    return float(member.entry.params)
