"""Which modules of a network are its feature layers: names, ``"auto"`` and the output pseudo-layer.

Layers are named as in ``model.named_modules()`` (e.g. ``"net.conv2"``). :func:`resolve_layers`
maps names to modules and turns a typo into an error that suggests the closest names
(:func:`suggest_names`); :func:`auto_layers` finds a network's stage outputs and its penultimate
features; :data:`OUTPUT` (``"@output"``) names the model itself, so that its own output (a
classifier's logits, which LEEP and NCE read) is captured like any layer.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn

from tguide.features.modes import eval_mode

__all__ = ["OUTPUT", "auto_layers", "resolve_layers", "suggest_names"]

#: pseudo-layer name: the model's own output (a classifier's logits), hooked on the root module
OUTPUT = "@output"


def suggest_names(name: str, valid: Sequence[str]) -> str:
    """`` Did you mean 'a' or 'b'?`` for the names of ``valid`` closest to ``name`` (``""`` if none is close)."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def resolve_layers(model: nn.Module, layers: Sequence[str] | str) -> dict[str, nn.Module]:
    """Map each name in ``layers`` to its module in ``model.named_modules()``.

    ``"auto"`` (alone) means :func:`auto_layers`; :data:`OUTPUT` names the model itself (its
    output). Raises ``ValueError`` for an empty list, a duplicate, or a name the model does
    not have (the message suggests the closest names and lists some valid ones).
    """
    if isinstance(layers, str):
        layers = auto_layers(model) if layers == "auto" else [layers]
    layers = list(layers)
    if layers == ["auto"]:
        layers = auto_layers(model)
    if not layers:
        raise ValueError("`layers` is empty; name at least one module, e.g. layers=['net.fc1'].")
    dupes = sorted({name for name in layers if layers.count(name) > 1})
    if dupes:
        raise ValueError(f"`layers` names {dupes} more than once; list each layer once.")
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in layers:
        if name == OUTPUT:
            found[name] = model
            continue
        if not isinstance(name, str) or not name or name not in modules:
            valid = [n for n in modules if n]
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            raise ValueError(
                f"`layers`: the model has no module named {name!r}.{suggest_names(str(name), valid)} "
                f"Names come from `model.named_modules()`: {shown}."
            )
        found[name] = modules[name]
    return found


def _sequential_stage_ends(model: nn.Module, features: nn.Sequential, size: int = 64) -> list[str]:
    """Names ``features.i`` of the last block at each spatial resolution.

    One dummy forward of ``features`` block by block (what ``nn.Sequential.forward`` does), in
    eval mode and without gradients, recording each block's output shape.
    """
    in_ch = next((m.in_channels for m in features.modules() if isinstance(m, nn.Conv2d)), 3)
    shapes: list[tuple[int, ...]] = []
    with eval_mode(model), torch.no_grad():
        x = torch.zeros(1, in_ch, size, size)
        for block in features:
            x = block(x)
            shapes.append(tuple(x.shape))
    ends = [i for i in range(len(shapes)) if i + 1 == len(shapes) or shapes[i + 1][-1] != shapes[i][-1]]
    prefix = next(n for n, m in model.named_modules() if m is features)
    return [f"{prefix}.{i}" for i in ends[1:]] if len(ends) > 1 else [f"{prefix}.{i}" for i in ends]


def auto_layers(model: nn.Module) -> list[str]:
    """The "auto" feature layers of ``model``: its stage outputs, then the penultimate features.

    In order: the model's own ``STAGES`` attribute (the zoo nets of :mod:`tguide.nets`), a
    wrapped ``net`` with ``STAGES`` (``net.<stage>``: tguide's Classifier), timm's
    ``feature_info`` (+ ``global_pool``), torchvision ResNets (``layer1..4``, ``avgpool``) and
    MobileNet/EfficientNet-style ``features`` Sequentials (the last block of every spatial
    resolution, then ``avgpool`` when there is one). ``ValueError`` otherwise: name the layers.
    """
    stages = getattr(model, "STAGES", None)
    if stages:
        return list(stages)
    net = getattr(model, "net", None)
    net_stages = getattr(net, "STAGES", None) if isinstance(net, nn.Module) else None
    if net_stages:
        return [f"net.{s}" for s in net_stages]
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            names = [d["module"] for d in info] if isinstance(info, list) else list(info.module_name())
        except Exception:  # noqa: BLE001 - not a timm FeatureInfo after all
            names = []
        names = [n for n in names if n in modules]
        if names:
            return names + (["global_pool"] if "global_pool" in modules else [])
    if all(f"layer{i}" in modules for i in (1, 2, 3, 4)):
        return ["layer1", "layer2", "layer3", "layer4"] + (["avgpool"] if "avgpool" in modules else [])
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats) > 1:
        names = _sequential_stage_ends(model, feats)
        if "avgpool" in modules:
            names.append("avgpool")
        elif names[-1] != f"features.{len(feats) - 1}":
            names.append(f"features.{len(feats) - 1}")
        return names
    raise ValueError(
        f"`layers='auto'`: no known stage layout for {type(model).__name__} (no STAGES attribute, not a "
        "torchvision ResNet/MobileNet/EfficientNet or timm model); pass the layer names, e.g. "
        f"layers={[n for n in modules if n][-3:]}."
    )
