"""The one :class:`Candidate` type and the registry of candidate sources.

A *source* turns the part of a spec after ``KIND:`` into a :class:`Candidate`;
:func:`register_source` adds one (the five built-in kinds, ``zoo``, ``torchvision``, ``timm``,
``ckpt`` and ``file``, are registered the same way by the modules beside this one), and
:func:`create_candidate` dispatches a spec to its source. :func:`list_candidates` lists what the
sources that can enumerate themselves offer (zoo names first), like ``timm.list_models``.

Every mistake is a one-line :class:`CandidateError` (a :class:`~tguide.errors.TGuideError`).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tguide.errors import TGuideError
from tguide.features import PoolSpec, auto_layers

__all__ = [
    "BUILTIN_KINDS",
    "Candidate",
    "CandidateError",
    "INIT_SEED",
    "SourceInfo",
    "create_candidate",
    "fallback_layers",
    "list_candidates",
    "register_source",
    "registered_sources",
    "resolve_candidate",
    "resolve_candidates",
    "seeded_init",
    "state_fingerprint",
]

INIT_SEED = 0  # random-init candidates are seeded, so that they (and their cache entries) are reproducible


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
        meta: free-form facts from the source (e.g. the zoo entry's training data).
        spec: the spec string that :func:`create_candidate` makes this candidate from again
            (``""`` for an in-memory module).
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
    spec: str = ""

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
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.detach().float().cpu().numpy().tobytes()
        )
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


def seeded_init(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under the fixed :data:`INIT_SEED` (the global RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build()


# -- transforms -------------------------------------------------------------------------------

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision/timm default


# -- the registry of sources --------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """One registered candidate source.

    Attributes:
        kind: the spec prefix (``zoo`` in ``zoo:NAME``).
        factory: ``rest -> Candidate``, ``rest`` being the spec after ``KIND:``.
        usage: the spec forms, for error messages (``"zoo:NAME, zoo:NAME:random"``).
        lister: ``() -> names`` of what :func:`list_candidates` shows for this kind (the part after
            ``KIND:``), or ``None`` when the source cannot enumerate itself (files, checkpoints).
    """

    kind: str
    factory: Callable[[str], Candidate] = field(repr=False)
    usage: str = ""
    lister: Callable[[], Iterable[str]] | None = field(default=None, repr=False)


_SOURCES: dict[str, SourceInfo] = {}
BUILTIN_KINDS = ("zoo", "torchvision", "timm", "ckpt", "file")  # listed first, in this order


def _ordered() -> list[SourceInfo]:
    """The sources: the built-in kinds in :data:`BUILTIN_KINDS` order, then the others as registered."""
    rank = {k: i for i, k in enumerate(BUILTIN_KINDS)}
    return sorted(_SOURCES.values(), key=lambda s: rank.get(s.kind, len(rank)))


def register_source(
    kind: str,
    factory: Callable[[str], Candidate],
    *,
    usage: str | None = None,
    lister: Callable[[], Iterable[str]] | None = None,
    replace: bool = False,
) -> SourceInfo:
    """Make ``create_candidate("KIND:REST")`` call ``factory(REST)``.

    Args:
        kind: the spec prefix: a non-empty identifier-like word without ``:``.
        factory: ``REST -> Candidate``; raise :class:`CandidateError` (one line) on a bad ``REST``.
        usage: the spec forms shown in errors (default ``"KIND:..."``).
        lister: names this source offers, for :func:`list_candidates` (optional).
        replace: allow replacing an already registered kind.

    Returns:
        the registered :class:`SourceInfo`.
    """
    if not isinstance(kind, str) or not kind or ":" in kind or not kind.replace("_", "a").replace("-", "a").isalnum():
        raise CandidateError(f"a source kind must be a non-empty word without ':', got {kind!r}")
    if not callable(factory):
        raise CandidateError(
            f"the factory of source {kind!r} must be callable (rest of the spec -> Candidate), "
            f"got {type(factory).__name__}"
        )
    if kind in _SOURCES and not replace:
        raise CandidateError(f"candidate source {kind!r} is already registered; pass replace=True to replace it")
    info = SourceInfo(kind, factory, usage or f"{kind}:...", lister)
    _SOURCES[kind] = info
    return info


def registered_sources() -> tuple[str, ...]:
    """The registered kinds: the built-ins (zoo, torchvision, timm, ckpt, file), then the others as registered."""
    return tuple(s.kind for s in _ordered())


def _unknown_spec(spec: str) -> CandidateError:
    usages = ", ".join(s.usage for s in _ordered())
    return CandidateError(
        f"unknown candidate spec {spec!r}; use one of {usages} (registered kinds: {', '.join(registered_sources())})"
    )


def _from_spec(spec: str) -> Candidate:
    kind, _, rest = spec.partition(":")
    if kind not in _SOURCES or not rest:
        raise _unknown_spec(spec)
    cand = _SOURCES[kind].factory(rest)
    if not isinstance(cand, Candidate):
        raise CandidateError(f"source {kind!r} returned a {type(cand).__name__} for {spec!r}, not a Candidate")
    if not cand.spec:
        cand.spec = spec
    return cand


def create_candidate(
    spec: str | Candidate | nn.Module,
    *,
    transform: Callable[[Any], Tensor] | None = None,
    layers: list[str] | None = None,
    name: str | None = None,
) -> Candidate:
    """A :class:`Candidate` from a spec (``KIND:REST`` of a registered source), a Candidate, or an ``nn.Module``.

    ``transform``, ``layers`` and ``name`` override what the spec gives (an ``nn.Module`` needs
    ``transform``). Raises :class:`CandidateError` (one line) for anything that cannot be resolved;
    an unknown kind lists the registered ones.
    """
    if isinstance(spec, Candidate):
        cand = spec
    elif isinstance(spec, nn.Module):
        if transform is None:
            raise CandidateError(f"a bare {type(spec).__name__} needs transform= (PIL image -> input tensor)")
        cand = Candidate(
            name or type(spec).__name__,
            spec,
            transform,
            layers or fallback_layers(spec),
            True,
            f"in-memory {type(spec).__name__}",
        )
    elif isinstance(spec, str):
        cand = _from_spec(spec)
    else:
        raise CandidateError(
            f"a candidate must be a spec string, a Candidate or an nn.Module, got {type(spec).__name__}"
        )
    if transform is not None:
        cand.transform = transform
    if layers is not None:
        cand.layers = list(layers)
    if name is not None:
        cand.name = name
    return cand


resolve_candidate = create_candidate  # the name callers used before the registry of sources


def resolve_candidates(specs: Any) -> list[Candidate]:
    """Resolve a list of specs; names must be unique (``CandidateError`` otherwise)."""
    if isinstance(specs, (str, Candidate, nn.Module)):
        specs = [specs]
    cands = [create_candidate(s) for s in specs]
    if not cands:
        raise CandidateError(
            "no candidates given; pass e.g. rank.candidates=[zoo:resnet20_cifar10,zoo:simplecnn_cifar10]"
        )
    names = [c.name for c in cands]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CandidateError(f"candidate names must be unique, {dupes} appear more than once")
    return cands


def list_candidates(pattern: str | None = None) -> list[str]:
    """Spec strings of the candidates the sources can enumerate, zoo names first (then torchvision
    architectures, then timm models when timm is installed), like ``timm.list_models``.

    ``pattern`` is a shell wildcard (:mod:`fnmatch`, case-insensitive) matched against the whole
    spec or the name after ``KIND:``: ``list_candidates("*resnet2*")``, ``list_candidates("zoo:*")``.
    Files and checkpoints (``ckpt:``, ``file:``) cannot be listed.
    """
    out: list[str] = []
    for info in _ordered():
        if info.lister is None:
            continue
        for name in info.lister():
            spec = f"{info.kind}:{name}"
            if (
                pattern is None
                or fnmatch.fnmatch(spec.lower(), pattern.lower())
                or fnmatch.fnmatch(str(name).lower(), pattern.lower())
            ):
                out.append(spec)
    return out
