"""Candidate sources from files: ``ckpt:PATH`` and ``file:PATH#ARCH``.

``ckpt:PATH`` is a checkpoint written by ``python -m tguide.fit``: the classifier's ``net``,
rebuilt from the run folder's ``config.yaml`` (or the checkpoint's hyper-parameters).
``file:PATH#ARCH`` is a plain state dict for a zoo architecture or a torchvision architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tguide.data.transforms import plain_transform
from tguide.select.candidates.base import IMAGENET_MEAN_STD, Candidate, CandidateError, fallback_layers, register_source
from tguide.select.checkpoints import read_checkpoint

__all__ = ["ckpt_source", "file_source"]


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("state_dict", "model", "net"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    out = dict(state)
    for prefix in ("module.", "net."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def file_source(path_arch: str) -> Candidate:
    """``PATH#ARCH``: the state dict at ``PATH`` loaded strictly into the zoo or torchvision ``ARCH``."""
    from tguide.select.candidates.library_sources import torchvision_archs
    from tguide.select.checkpoints import file_sha256, load_state_dict_checked
    from tguide.select.zoo import ZOO

    if "#" not in path_arch:
        raise CandidateError(
            f"file:{path_arch}: name the architecture after '#', e.g. file:weights.pt#resnet20_cifar10 "
            f"(zoo architectures: {', '.join(ZOO)}; or a torchvision arch such as resnet18)"
        )
    path_s, arch = path_arch.rsplit("#", 1)
    path = Path(path_s).expanduser()
    if not path.is_file():
        raise CandidateError(f"file:{path_s}: no such file {str(path.resolve())!r}")
    if arch in ZOO:
        entry = ZOO[arch]
        from tguide.select.zoo import zoo_transform

        model, transform, layers, head = entry.builder(), zoo_transform(entry), list(entry.layers), entry.has_head
    else:
        if arch not in torchvision_archs():
            raise CandidateError(
                f"file:{path_s}#{arch}: unknown architecture {arch!r}; valid: the zoo names "
                f"({', '.join(ZOO)}) or a torchvision arch (torchvision.models.list_models())"
            )
        from torchvision import models

        model = models.get_model(arch, weights=None)
        transform, head = plain_transform(3, 224, *IMAGENET_MEAN_STD, crop=True), True
        layers = fallback_layers(model)
    state = read_checkpoint(path, error=CandidateError)
    if not isinstance(state, Mapping):
        raise CandidateError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    state = _strip(state)
    if arch not in ZOO and "fc.weight" in state:  # a torchvision classifier with its own class count
        from torchvision import models

        model = models.get_model(arch, weights=None, num_classes=int(state["fc.weight"].shape[0]))
    load_state_dict_checked(model, state, f"file {str(path)!r}")
    sha = file_sha256(path)
    return Candidate(
        f"{path.stem}#{arch}",
        model.eval(),
        transform,
        layers,
        head,
        f"state dict {path.resolve()} sha256 {sha} as {arch}",
        None,
        0,
        f"sha256:{sha}",
    )


def ckpt_source(path_s: str) -> Candidate:
    """``PATH``: the ``net`` of a Lightning checkpoint written by ``tguide.fit``, with its run's input transform."""
    from omegaconf import DictConfig, OmegaConf

    from tguide.select.checkpoints import file_sha256

    path = Path(path_s).expanduser()
    if not path.is_file():
        raise CandidateError(f"ckpt:{path_s}: no such checkpoint {str(path.resolve())!r}")
    ckpt = read_checkpoint(path, error=CandidateError, weights_only=False, what="checkpoint ")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CandidateError(
            f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict'); for a plain state dict use file:PATH#ARCH"
        )
    cfg: DictConfig | None = None
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            loaded = OmegaConf.load(folder / "config.yaml")
            if not isinstance(loaded, DictConfig):
                raise CandidateError(
                    f"ckpt:{path_s}: {str(folder / 'config.yaml')!r} is a YAML list, not a run config (a mapping)"
                )
            cfg = loaded
            break
    model_cfg = cfg.get("model") if cfg is not None else None
    if model_cfg is None:
        hp = ckpt.get("hyper_parameters") or {}
        if isinstance(hp, Mapping) and isinstance(hp.get("net"), Mapping) and "_target_" in hp["net"]:
            model_cfg = OmegaConf.create({"net": hp["net"]})
    if model_cfg is None or model_cfg.get("net") is None:
        raise CandidateError(
            f"ckpt:{path_s}: cannot rebuild the network: no config.yaml with a model.net block in "
            f"{str(path.parent)!r} or its parent, and no net in the checkpoint's hyper-parameters"
        )
    from hydra.utils import instantiate

    try:
        net = instantiate(model_cfg.net)
    except Exception as err:  # noqa: BLE001
        raise CandidateError(f"ckpt:{path_s}: cannot build model.net ({model_cfg.net.get('_target_')}): {err}") from err
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    from tguide.select.checkpoints import load_state_dict_checked

    load_state_dict_checked(net, state, f"checkpoint {str(path)!r}")
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 1
    size = int(model_cfg.net.get("image_size") or (28 if channels == 1 else 32))
    data_target = str((cfg.get("data") or {}).get("_target_", "")) if cfg is not None else ""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    if "mnist" in data_target.lower():
        from tguide.data.mnist import MEAN, STD

        mean, std = (float(MEAN),), (float(STD),)
    else:
        mean, std = (0.5,) * channels, (0.5,) * channels
    acc = None
    metrics_file = path.parent.parent / "metrics.json"
    if metrics_file.is_file():
        import json

        try:
            acc = json.loads(metrics_file.read_text()).get("test/acc")
        except (ValueError, AttributeError):
            acc = None
    sha = file_sha256(path)
    head = isinstance(list(net.children())[-1] if list(net.children()) else None, nn.Linear)
    return Candidate(
        f"ckpt:{path.parent.parent.name}/{path.name}",
        net.eval(),
        plain_transform(channels, size, mean, std),
        fallback_layers(net),
        head,
        f"tguide checkpoint {path.resolve()} sha256 {sha}",
        acc,
        0,
        f"sha256:{sha}",
    )


register_source("ckpt", ckpt_source, usage="ckpt:PATH")
register_source("file", file_source, usage="file:PATH#ARCH")
