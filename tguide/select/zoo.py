"""The pretrained source zoo: 16 published checkpoints, their architectures, inputs and checks.

:data:`ZOO` maps a short name to a :class:`ZooEntry`: where the file lies under the models root,
its sha256, the builder of the matching :mod:`tguide.nets` module, the input it expects
(:class:`InputSpec`), the source task, accuracies (the publisher's and the one measured on the
shared data, from ``shared/models/README.md``), the parameter count, the "auto" feature layers
and whether it has a classifier head.

The 16 entries (11 checkpoints of CIFAR-10, MNIST and ImageNet, and the ImageNet sub-zoo of 5) are
tabled in :mod:`tguide.select.zoo_entries`.

Models root (:func:`models_root`): the ``root`` argument, else ``$TGUIDE_MODELS``, else
``../shared/models`` **relative to the current working directory** (the layout of this project's
checkout, next to ``../shared/data``; run from the repository root or set ``TGUIDE_MODELS``).

:func:`load_zoo_model` checks that the file exists, verifies its sha256 (cached in memory per
path, mtime and size, so a second load does not hash again), loads it with
``torch.load(map_location="cpu", weights_only=True)`` and ``load_state_dict(strict=True)``, and
returns the model in eval mode. Every failure is a one-line :class:`~tguide.errors.TGuideError`.
The entries (:class:`ZooEntry` and the table) are in :mod:`tguide.select.zoo_entries`.
:func:`zoo_transform` maps a PIL image of any mode to the model's normalised input tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tguide.data.transforms import RESIZE_POLICIES, InputSpec, input_transform
from tguide.errors import TGuideError
from tguide.select.checkpoints import file_sha256, load_state_dict_checked  # re-exported
from tguide.select.zoo_entries import ENTRIES, IMAGENET_SUBZOO, ZooEntry  # ZooEntry re-exported

ENV_VAR = "TGUIDE_MODELS"
DEFAULT_ROOT = Path("..") / "shared" / "models"

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "InputSpec",
    "RESIZE_POLICIES",
    "ZOO",
    "ZooEntry",
    "file_sha256",
    "get_zoo_entry",
    "load_state_dict_checked",
    "load_zoo_model",
    "models_root",
    "register_zoo_model",
    "zoo_names",
    "zoo_transform",
]


ZOO: dict[str, ZooEntry] = {}  # name -> entry, in registration order: the one zoo every part reads


def register_zoo_model(entry: ZooEntry, *, replace: bool = False) -> ZooEntry:
    """Add ``entry`` to :data:`ZOO` (so ``zoo:NAME`` names it everywhere) and return it.

    An entry either names a checkpoint file (``path`` under the models root and its ``sha256``)
    or has a ``load`` callable and no file. Raises :class:`TGuideError` for a name already taken
    (unless ``replace``), or an entry with neither a file nor ``load``.
    """
    if not isinstance(entry, ZooEntry):
        raise TGuideError(f"register_zoo_model takes a ZooEntry, got {type(entry).__name__}")
    if not entry.name or ":" in entry.name:
        raise TGuideError(f"a zoo name must be non-empty and without ':', got {entry.name!r}")
    if entry.load is None and not (entry.path and len(entry.sha256) == 64):
        raise TGuideError(
            f"zoo entry {entry.name!r} needs a checkpoint (path and its 64-digit sha256) or a "
            "load=callable returning the model"
        )
    if entry.load is not None and not callable(entry.load):
        raise TGuideError(f"zoo entry {entry.name!r}: load must be callable, got {type(entry.load).__name__}")
    if not callable(entry.builder):
        raise TGuideError(f"zoo entry {entry.name!r}: builder must be callable (() -> untrained nn.Module)")
    if entry.name in ZOO and not replace:
        raise TGuideError(f"zoo model {entry.name!r} is already registered; pass replace=True to replace it")
    ZOO[entry.name] = entry
    return entry


for _e in (*ENTRIES, *IMAGENET_SUBZOO):
    register_zoo_model(_e)
del _e


def zoo_names() -> tuple[str, ...]:
    """The registry's names, in table order."""
    return tuple(ZOO)


def get_zoo_entry(name: str) -> ZooEntry:
    """The registered entry ``name``; an unknown name is a one-line :class:`TGuideError` listing the names."""
    if name not in ZOO:
        raise TGuideError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    return ZOO[name]


def _entry(name: str | ZooEntry) -> ZooEntry:
    return name if isinstance(name, ZooEntry) else get_zoo_entry(name)


def models_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The models root: ``root`` if given, else ``$TGUIDE_MODELS``, else ``../shared/models``
    relative to the current working directory. Not checked for existence (see :func:`load_zoo_model`)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_ROOT.resolve()


def load_zoo_model(
    name: str | ZooEntry, *, root: str | os.PathLike[str] | None = None, verify: bool = True
) -> tuple[nn.Module, ZooEntry]:
    """Build the zoo model ``name``, load its pretrained weights strictly, return ``(model.eval(), entry)``.

    An entry with ``load`` (no file) is built by calling it; ``root`` and ``verify`` do not apply.

    Args:
        name: a key of :data:`ZOO` (or a :class:`ZooEntry`).
        root: models root (default: :func:`models_root`).
        verify: check the file's sha256 against the registry (cached per path, mtime and size).

    Raises:
        TGuideError: unknown name, missing file, wrong sha256, unreadable file, or a state dict
            that does not fit the architecture.
    """
    entry = _entry(name)
    if entry.load is not None:
        return _load_built(entry), entry
    base = models_root(root)
    path = base / entry.path
    if not path.is_file():
        if root is not None and str(root) != "":
            origin = "the root argument"
        elif os.environ.get(ENV_VAR):
            origin = f"${ENV_VAR}"
        else:
            origin = f"the default ../shared/models; ${ENV_VAR} is not set"
        raise TGuideError(
            f"zoo model {entry.name!r}: file {str(path)!r} not found (models root from {origin}); "
            f"point {ENV_VAR} at the folder that holds the checkpoints, e.g. {ENV_VAR}=../shared/models"
        )
    if verify:
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise TGuideError(
                f"zoo model {entry.name!r}: sha256 of {str(path)!r} is {actual}, expected {entry.sha256}; "
                "the file is corrupt or not the published checkpoint"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and weights-only errors all mean "not loadable"
        raise TGuideError(
            f"zoo model {entry.name!r}: cannot load {str(path)!r}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if entry.state_dict_key is not None and isinstance(obj, Mapping) and entry.state_dict_key in obj:
        obj = obj[entry.state_dict_key]
    if not isinstance(obj, Mapping):
        raise TGuideError(f"zoo model {entry.name!r}: {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    state = {
        (k[len(entry.strip_prefix) :] if entry.strip_prefix and k.startswith(entry.strip_prefix) else k): v
        for k, v in obj.items()
    }
    model = entry.builder()
    load_state_dict_checked(model, state, f"zoo model {entry.name!r} ({str(path)!r})")
    return model.eval(), entry


def _load_built(entry: ZooEntry) -> nn.Module:
    """The model of an entry without a file, from its ``load`` callable."""
    assert entry.load is not None
    try:
        model = entry.load()
    except TGuideError:
        raise
    except Exception as err:  # noqa: BLE001 - a study's loader may fail in any way; say which entry
        raise TGuideError(
            f"zoo model {entry.name!r}: its load() failed: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not isinstance(model, nn.Module):
        raise TGuideError(f"zoo model {entry.name!r}: load() returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def zoo_transform(entry: str | ZooEntry, resize: str | None = None) -> Callable[[Any], torch.Tensor]:
    """:func:`tguide.data.transforms.input_transform` of the entry's :class:`InputSpec`: PIL image
    (any mode) → the model's normalised input; ``resize`` overrides the entry's policy. For the
    MNIST LeNets on 16×16 USPS-like digits, ``"pad"`` (20×20 digit in a 28×28 frame) is the policy
    that transfers (USPS 93.3% vs 71.1% with ``"stretch"``, shared/models/README.md)."""
    return input_transform(_entry(entry).input, resize)
