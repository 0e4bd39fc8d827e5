"""Candidates for model selection: a network, its own input transform, its layers and provenance.

:func:`resolve_candidate` turns a spec into a :class:`Candidate`:

=================================  ============================================================
spec                               candidate
=================================  ============================================================
``zoo:NAME``                       a pretrained checkpoint of :data:`tguide.select.zoo.ZOO`
                                   (sha256 checked), with its own input transform
``zoo:NAME:random``                the same architecture, seeded random init (a floor to beat)
``torchvision:ARCH``               a torchvision architecture, seeded random init
``torchvision:ARCH:WEIGHTS``       its pretrained ``WEIGHTS`` (e.g. ``IMAGENET1K_V1``), read
                                   from the torch hub cache only (never downloaded)
``timm:NAME[:random]``             a timm model (pretrained from the local cache), if timm is
                                   installed
``ckpt:PATH``                      a checkpoint written by ``python -m tguide.fit``: the
                                   classifier's ``net``, rebuilt from the run folder's
                                   ``config.yaml`` (or the checkpoint's hyper-parameters)
``file:PATH#ARCH``                 a plain state dict for a zoo architecture or torchvision arch
an ``nn.Module``                   used as is (``transform=`` required)
=================================  ============================================================

Every mistake is a one-line :class:`CandidateError` (a :class:`~tguide.errors.TGuideError`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from tguide.errors import TGuideError
from tguide.features import PoolSpec, auto_layers

__all__ = ["Candidate", "CandidateError", "KINDS", "resolve_candidate", "resolve_candidates", "fallback_layers",
           "state_fingerprint"]

KINDS = ("zoo", "torchvision", "timm", "ckpt", "file")
_INIT_SEED = 0  # random-init candidates are seeded, so that they (and their cache entries) are reproducible


class CandidateError(TGuideError):
    """A candidate spec that cannot be resolved (unknown name, missing or wrong weights, ...)."""


@dataclass
class Candidate:
    """One source model to rank.

    Attributes:
        name: display name (unique within a ranking).
        network: the ``nn.Module`` (eval mode).
        transform: PIL image → input tensor ``(C, H, W)``.
        layers: the "auto" feature layers (stage outputs, then the penultimate features).
        head: whether ``network(x)`` returns source-class logits (LEEP and NCE need it).
        provenance: where the weights come from (zoo entry + sha256, torchvision weights, path).
        source_accuracy: top-1 on its source task, as a fraction, if known.
        num_params: parameter count.
        fingerprint: content key of the weights (file sha256, or the spec for seeded random
            init) used by the feature cache.
        pool: per-layer pooling (see :func:`tguide.features.reduce_output`).
    """

    name: str
    network: nn.Module
    transform: Callable[[Any], Tensor]
    layers: list[str]
    head: bool
    provenance: str
    source_accuracy: float | None = None
    num_params: int = 0
    fingerprint: str = ""
    pool: PoolSpec = "avg"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network.eval()
        if not self.num_params:
            self.num_params = sum(p.numel() for p in self.network.parameters())
        if not self.fingerprint:
            self.fingerprint = state_fingerprint(self.network)
        self.layers = list(self.layers)


def state_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, bytes): the cache key of an in-memory model."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.detach().float().cpu().numpy().tobytes())
    return "state:" + h.hexdigest()


def fallback_layers(model: nn.Module) -> list[str]:
    """:func:`tguide.features.auto_layers`, else the last (up to) three top-level conv/pool/linear
    children before the final linear (e.g. LeNet-5: ``pool2``, ``fc1``, ``fc2``)."""
    try:
        return auto_layers(model)
    except ValueError:
        pass
    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Sequential)
    children = [(n, m) for n, m in model.named_children() if isinstance(m, kinds)]
    if children and isinstance(children[-1][1], nn.Linear):
        children = children[:-1]
    names = [n for n, _ in children][-3:]
    if not names:
        raise CandidateError(f"no 'auto' layers for {type(model).__name__}; pass layers=[...] explicitly")
    return names


# -- transforms -------------------------------------------------------------------------------

class _Convert:
    """PIL image → ``mode`` (picklable, with a stable repr for the cache key)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, im: Any) -> Any:
        return im if getattr(im, "mode", self.mode) == self.mode else im.convert(self.mode)

    def __repr__(self) -> str:
        return f"Convert({self.mode!r})"


def _plain_transform(channels: int, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                     crop: bool = False) -> Callable[[Any], Tensor]:
    from torchvision import transforms as T

    bilinear = T.InterpolationMode.BILINEAR
    resize: list[Any] = ([T.Resize(int(size * 256 / 224), interpolation=bilinear, antialias=True), T.CenterCrop(size)]
                         if crop else [T.Resize((size, size), interpolation=bilinear, antialias=True)])
    return T.Compose([_Convert("L" if channels == 1 else "RGB"), *resize, T.ToTensor(), T.Normalize(mean, std)])


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# -- the kinds --------------------------------------------------------------------------------

def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        return build()


def _zoo(name: str, option: str | None) -> Candidate:
    from tguide.select.zoo import ZOO, load_zoo_model, zoo_transform

    if name not in ZOO:
        raise CandidateError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    entry = ZOO[name]
    if option not in (None, "random"):
        raise CandidateError(f"zoo:{name}:{option}: the only option after a zoo name is ':random' (random init)")
    if option == "random":
        model = _seeded(entry.builder)
        return Candidate(f"{name}:random", model.eval(), zoo_transform(entry), list(entry.layers), entry.has_head,
                         f"zoo {name} architecture, random init (seed {_INIT_SEED})", None,
                         entry.params, f"zoo:{name}:random:{_INIT_SEED}")
    model, entry = load_zoo_model(name)
    acc = entry.measured_acc if entry.measured_acc is not None else entry.reported_acc
    return Candidate(name, model, zoo_transform(entry), list(entry.layers), entry.has_head,
                     f"zoo {name}: {entry.path} sha256 {entry.sha256}", acc, entry.params, f"sha256:{entry.sha256}",
                     meta={"source": entry.source, "measured_on": entry.measured_on})


def _torchvision_archs() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _torchvision(arch: str, weights: str | None) -> Candidate:
    from torchvision import models

    archs = _torchvision_archs()
    if arch not in archs:
        import difflib

        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CandidateError(f"unknown torchvision architecture {arch!r}{hint}; see torchvision.models.list_models()")
    if weights is None:
        model = _seeded(lambda: models.get_model(arch, weights=None))
        return Candidate(f"torchvision:{arch}", model.eval(), _plain_transform(3, 224, *_IMAGENET, crop=True),
                         fallback_layers(model), True, f"torchvision {arch}, random init (seed {_INIT_SEED})",
                         None, 0, f"torchvision:{arch}:random:{_INIT_SEED}")
    enum = models.get_model_weights(arch)
    names = [w.name for w in enum]
    if weights not in names and weights != "DEFAULT":
        raise CandidateError(f"torchvision {arch} has no weights {weights!r}; valid: {', '.join(names)}")
    w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not path.is_file():
        raise CandidateError(f"torchvision:{arch}:{w.name}: weights file not in the torch hub cache, expected "
                             f"{str(path)!r} (offline: nothing is downloaded; copy the file there or set TORCH_HOME)")
    from tguide.select.zoo import file_sha256, load_state_dict_checked

    model = models.get_model(arch, weights=None, num_classes=len(w.meta.get("categories") or []) or 1000)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CandidateError(f"cannot load {str(path)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    load_state_dict_checked(model, state, f"torchvision weights {str(path)!r}")
    acc = None
    for metrics in (w.meta.get("_metrics") or {}).values():
        if "acc@1" in metrics:
            acc = float(metrics["acc@1"]) / 100
            break
    sha = file_sha256(path)
    transform = _Compose2(_Convert("RGB"), w.transforms())
    return Candidate(f"torchvision:{arch}:{w.name}", model.eval(), transform, fallback_layers(model), True,
                     f"torchvision {arch} {w.name}: {path} sha256 {sha}", acc, 0, f"sha256:{sha}")


class _Compose2:
    def __init__(self, *steps: Callable[[Any], Any]) -> None:
        self.steps = steps

    def __call__(self, x: Any) -> Any:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(s) for s in self.steps) + ")"


def _timm(name: str, option: str | None) -> Candidate:
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        raise CandidateError(f"timm:{name}: timm is not installed; pip install timm") from None
    pretrained = option != "random"
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = _seeded(lambda: timm.create_model(name, pretrained=pretrained))
    except Exception as err:  # noqa: BLE001 - unknown name, weights not cached
        raise CandidateError(f"timm:{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    transform = _plain_transform(3, size, tuple(cfg["mean"]), tuple(cfg["std"]), crop=True)
    head = getattr(model, "num_classes", 0) > 0
    return Candidate(f"timm:{name}" + (":random" if not pretrained else ""), model.eval(), transform,
                     fallback_layers(model), head, f"timm {name} ({'pretrained' if pretrained else 'random init'})",
                     None, 0, "" if pretrained else f"timm:{name}:random:{_INIT_SEED}")


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("state_dict", "model", "net"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    out = dict(state)
    for prefix in ("module.", "net."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _file(path_arch: str) -> Candidate:
    from tguide.select.zoo import ZOO, file_sha256, load_state_dict_checked

    if "#" not in path_arch:
        raise CandidateError(f"file:{path_arch}: name the architecture after '#', e.g. file:weights.pt#resnet20_cifar10 "
                             f"(zoo architectures: {', '.join(ZOO)}; or a torchvision arch such as resnet18)")
    path_s, arch = path_arch.rsplit("#", 1)
    path = Path(path_s).expanduser()
    if not path.is_file():
        raise CandidateError(f"file:{path_s}: no such file {str(path.resolve())!r}")
    if arch in ZOO:
        entry = ZOO[arch]
        from tguide.select.zoo import zoo_transform

        model, transform, layers, head = entry.builder(), zoo_transform(entry), list(entry.layers), entry.has_head
    else:
        if arch not in _torchvision_archs():
            raise CandidateError(f"file:{path_s}#{arch}: unknown architecture {arch!r}; valid: the zoo names "
                                 f"({', '.join(ZOO)}) or a torchvision arch (torchvision.models.list_models())")
        from torchvision import models

        model = models.get_model(arch, weights=None)
        transform, head = _plain_transform(3, 224, *_IMAGENET, crop=True), True
        layers = fallback_layers(model)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CandidateError(f"cannot load {str(path)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(state, Mapping):
        raise CandidateError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    state = _strip(state)
    if arch not in ZOO and "fc.weight" in state:  # a torchvision classifier with its own class count
        from torchvision import models

        model = models.get_model(arch, weights=None, num_classes=int(state["fc.weight"].shape[0]))
    load_state_dict_checked(model, state, f"file {str(path)!r}")
    sha = file_sha256(path)
    return Candidate(f"{path.stem}#{arch}", model.eval(), transform, layers, head,
                     f"state dict {path.resolve()} sha256 {sha} as {arch}", None, 0, f"sha256:{sha}")


def _ckpt(path_s: str) -> Candidate:
    from omegaconf import OmegaConf

    from tguide.select.zoo import file_sha256

    path = Path(path_s).expanduser()
    if not path.is_file():
        raise CandidateError(f"ckpt:{path_s}: no such checkpoint {str(path.resolve())!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CandidateError(f"cannot load checkpoint {str(path)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CandidateError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict'); for a plain state dict "
                             "use file:PATH#ARCH")
    cfg = None
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            cfg = OmegaConf.load(folder / "config.yaml")
            break
    model_cfg = cfg.get("model") if cfg is not None else None
    if model_cfg is None:
        hp = ckpt.get("hyper_parameters") or {}
        if isinstance(hp, Mapping) and isinstance(hp.get("net"), Mapping) and "_target_" in hp["net"]:
            model_cfg = OmegaConf.create({"net": hp["net"]})
    if model_cfg is None or model_cfg.get("net") is None:
        raise CandidateError(f"ckpt:{path_s}: cannot rebuild the network: no config.yaml with a model.net block in "
                             f"{str(path.parent)!r} or its parent, and no net in the checkpoint's hyper-parameters")
    from hydra.utils import instantiate

    try:
        net = instantiate(model_cfg.net)
    except Exception as err:  # noqa: BLE001
        raise CandidateError(f"ckpt:{path_s}: cannot build model.net ({model_cfg.net.get('_target_')}): {err}") from err
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    from tguide.select.zoo import load_state_dict_checked

    load_state_dict_checked(net, state, f"checkpoint {str(path)!r}")
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 1
    size = int(model_cfg.net.get("image_size") or (28 if channels == 1 else 32))
    data_target = str((cfg.get("data") or {}).get("_target_", "")) if cfg is not None else ""
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
    return Candidate(f"ckpt:{path.parent.parent.name}/{path.name}", net.eval(),
                     _plain_transform(channels, size, mean, std), fallback_layers(net), head,
                     f"tguide checkpoint {path.resolve()} sha256 {sha}", acc, 0, f"sha256:{sha}")


def resolve_candidate(spec: str | Candidate | nn.Module, *, transform: Callable[[Any], Tensor] | None = None,
                      layers: list[str] | None = None, name: str | None = None) -> Candidate:
    """A :class:`Candidate` from a spec (see the module doc), a Candidate, or an ``nn.Module``.

    ``transform``, ``layers`` and ``name`` override what the spec gives (an ``nn.Module`` needs
    ``transform``). Raises :class:`CandidateError` (one line) for anything that cannot be resolved.
    """
    if isinstance(spec, Candidate):
        cand = spec
    elif isinstance(spec, nn.Module):
        if transform is None:
            raise CandidateError(f"a bare {type(spec).__name__} needs transform= (PIL image -> input tensor)")
        cand = Candidate(name or type(spec).__name__, spec, transform, layers or fallback_layers(spec),
                         True, f"in-memory {type(spec).__name__}")
    elif isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind not in KINDS or not rest:
            raise CandidateError(f"unknown candidate spec {spec!r}; use one of zoo:NAME, zoo:NAME:random, "
                                 "torchvision:ARCH[:WEIGHTS], timm:NAME, ckpt:PATH, file:PATH#ARCH")
        if kind == "zoo":
            zname, _, option = rest.partition(":")
            cand = _zoo(zname, option or None)
        elif kind == "torchvision":
            arch, _, weights = rest.partition(":")
            cand = _torchvision(arch, weights or None)
        elif kind == "timm":
            tname, _, option = rest.partition(":")
            cand = _timm(tname, option or None)
        elif kind == "ckpt":
            cand = _ckpt(rest)
        else:
            cand = _file(rest)
    else:
        raise CandidateError(f"a candidate must be a spec string, a Candidate or an nn.Module, got {type(spec).__name__}")
    if transform is not None:
        cand.transform = transform
    if layers is not None:
        cand.layers = list(layers)
    if name is not None:
        cand.name = name
    return cand


def resolve_candidates(specs: Any) -> list[Candidate]:
    """Resolve a list of specs; names must be unique (``CandidateError`` otherwise)."""
    if isinstance(specs, (str, Candidate, nn.Module)):
        specs = [specs]
    cands = [resolve_candidate(s) for s in specs]
    if not cands:
        raise CandidateError("no candidates given; pass e.g. rank.candidates=[zoo:resnet20_cifar10,zoo:simplecnn_cifar10]")
    names = [c.name for c in cands]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CandidateError(f"candidate names must be unique, {dupes} appear more than once")
    return cands
