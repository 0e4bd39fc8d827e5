"""Candidate sources from model libraries: ``torchvision:ARCH[:WEIGHTS]`` and ``timm:NAME[:random]``.

``torchvision:ARCH`` is a seeded random init; ``torchvision:ARCH:WEIGHTS`` (e.g. ``IMAGENET1K_V1``
or ``DEFAULT``) reads the weights from the torch hub cache only (never downloaded).
``timm:NAME`` is a timm model, pretrained from the local cache (``HF_HUB_OFFLINE``), if timm is
installed; ``timm:NAME:random`` its seeded random init.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tguide.data.transforms import ConvertMode, plain_transform
from tguide.select.candidates.base import (
    IMAGENET_MEAN_STD,
    INIT_SEED,
    Candidate,
    CandidateError,
    fallback_layers,
    register_source,
    seeded_init,
)
from tguide.select.checkpoints import read_checkpoint

__all__ = ["timm_source", "torchvision_archs", "torchvision_source"]


def torchvision_archs() -> list[str]:
    """torchvision's classification architectures (``torchvision.models.list_models``)."""
    from torchvision import models

    return sorted(models.list_models(module=models))


class _Compose2:
    def __init__(self, *steps: Callable[[Any], Any]) -> None:
        self.steps = steps

    def __call__(self, x: Any) -> Any:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(s) for s in self.steps) + ")"


def torchvision_source(rest: str) -> Candidate:
    """``ARCH`` (seeded random init) or ``ARCH:WEIGHTS`` (from the torch hub cache)."""
    from torchvision import models

    arch, _, weights = rest.partition(":")
    archs = torchvision_archs()
    if arch not in archs:
        import difflib

        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CandidateError(f"unknown torchvision architecture {arch!r}{hint}; see torchvision.models.list_models()")
    if not weights:
        model = seeded_init(lambda: models.get_model(arch, weights=None))
        return Candidate(
            f"torchvision:{arch}",
            model.eval(),
            plain_transform(3, 224, *IMAGENET_MEAN_STD, crop=True),
            fallback_layers(model),
            True,
            f"torchvision {arch}, random init (seed {INIT_SEED})",
            None,
            0,
            f"torchvision:{arch}:random:{INIT_SEED}",
        )
    enum = models.get_model_weights(arch)
    names = [w.name for w in enum]
    if weights not in names and weights != "DEFAULT":
        raise CandidateError(f"torchvision {arch} has no weights {weights!r}; valid: {', '.join(names)}")
    w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not path.is_file():
        raise CandidateError(
            f"torchvision:{arch}:{w.name}: weights file not in the torch hub cache, expected "
            f"{str(path)!r} (offline: nothing is downloaded; copy the file there or set TORCH_HOME)"
        )
    from tguide.select.checkpoints import file_sha256, load_state_dict_checked

    model = models.get_model(arch, weights=None, num_classes=len(w.meta.get("categories") or []) or 1000)
    state = read_checkpoint(path, error=CandidateError)
    load_state_dict_checked(model, state, f"torchvision weights {str(path)!r}")
    acc = None
    for metrics in (w.meta.get("_metrics") or {}).values():
        if "acc@1" in metrics:
            acc = float(metrics["acc@1"]) / 100
            break
    sha = file_sha256(path)
    transform = _Compose2(ConvertMode("RGB"), w.transforms())
    return Candidate(
        f"torchvision:{arch}:{w.name}",
        model.eval(),
        transform,
        fallback_layers(model),
        True,
        f"torchvision {arch} {w.name}: {path} sha256 {sha}",
        acc,
        0,
        f"sha256:{sha}",
    )


def timm_source(rest: str) -> Candidate:
    """``NAME`` (pretrained, from the local cache) or ``NAME:random`` (seeded random init)."""
    name, _, option = rest.partition(":")
    try:
        import timm
    except ImportError:
        raise CandidateError(f"timm:{name}: timm is not installed; pip install timm") from None
    pretrained = option != "random"
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = seeded_init(lambda: timm.create_model(name, pretrained=pretrained))
    except Exception as err:  # noqa: BLE001 - unknown name, weights not cached
        raise CandidateError(
            f"timm:{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    transform = plain_transform(3, size, tuple(cfg["mean"]), tuple(cfg["std"]), crop=True)
    head = getattr(model, "num_classes", 0) > 0
    return Candidate(
        f"timm:{name}" + (":random" if not pretrained else ""),
        model.eval(),
        transform,
        fallback_layers(model),
        head,
        f"timm {name} ({'pretrained' if pretrained else 'random init'})",
        None,
        0,
        "" if pretrained else f"timm:{name}:random:{INIT_SEED}",
    )


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


register_source("torchvision", torchvision_source, usage="torchvision:ARCH[:WEIGHTS]", lister=torchvision_archs)
register_source("timm", timm_source, usage="timm:NAME[:random]", lister=_timm_names)
