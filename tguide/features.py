"""Named-layer feature capture through forward hooks.

Transferability metrics score the representation a network computes at some layer. This
module reads those representations without touching the network's code: a forward hook on
each named module (names as in ``model.named_modules()``, e.g. ``"net.conv2"``) copies the
module's output while the model runs, and the hooks are removed afterwards, also when the
forward pass raises.

Image-level mode (:func:`extract_features`): every sample gives one row per layer. How a
layer's output becomes a row is chosen per layer by ``pool`` (a name, a callable, or a dict
``{layer: pool}``), and an ambiguous layout is an error that names the option to pass:

====================  ============================  ======================================
``pool``              output layout                 row
====================  ============================  ======================================
``"avg"``             ``(B, C, *spatial)``, ≥ 4-D   mean over the spatial axes → ``(B, C)``
``"cls"``             ``(B, T, C)`` tokens          the first (class) token → ``(B, C)``
``"mean"``            ``(B, T, C)`` tokens          mean over the tokens → ``(B, C)``
``"channels_last"``   ``(B, *spatial, C)``          mean over the spatial axes → ``(B, C)``
``"flatten"``         any                           ``vec`` of everything after B
``"none"``            any                           unchanged (the caller reduces it)
callable              any                           ``pool(output)`` must be ``(B, D)``
====================  ============================  ======================================

``(B, D)`` outputs pass through every pool. A 3-D output with ``pool="avg"`` is refused:
``(B, T, C)`` tokens and ``(B, C, L)`` sequences look alike, so the caller must say which.

.. math::

    \\text{avg}: \\; f_c = \\frac{1}{HW} \\sum_{h,w} x_{c,h,w} \\in \\mathbb{R}^{C},
    \\qquad \\text{flatten}: \\; f = \\operatorname{vec}(x) \\in \\mathbb{R}^{CHW}.

``max_samples`` is a seeded, class-stratified random subset (every class keeps at least one
sample), the same rule as everywhere in tguide. ``layers="auto"`` takes :func:`auto_layers`.
The pseudo-layer :data:`OUTPUT` (``"@output"``) captures the model's own output (the logits
of a classifier, which LEEP and NCE read).

Pixel-level mode, for segmentation (one row per sampled pixel): :mod:`tguide.pixel_features`.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "OUTPUT",
    "POOLS",
    "FeatureSet",
    "LayerCapture",
    "PoolSpec",
    "auto_layers",
    "check_pool",
    "dataset_labels",
    "default_unpack",
    "describe_pool",
    "eval_mode",
    "extract_features",
    "pool_for",
    "reduce_output",
    "resolve_layers",
]

PoolName = Literal["avg", "cls", "mean", "channels_last", "flatten", "none"]
Pool = PoolName  # backwards-compatible alias
POOLS: tuple[str, ...] = ("avg", "cls", "mean", "channels_last", "flatten", "none")
PoolFn = Callable[[Tensor], Tensor]
PoolSpec = str | PoolFn | Mapping[str, "str | PoolFn"]
Unpack = Callable[[Any], tuple[Tensor, Tensor]]

#: pseudo-layer name: the model's own output (a classifier's logits), hooked on the root module
OUTPUT = "@output"

_INPUT_KEYS = ("x", "image", "images", "input", "inputs")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets", "mask", "masks")


@dataclass(frozen=True)
class FeatureSet:
    """Features of several layers for the same rows.

    Attributes:
        features: layer name -> ``(M, D_layer)`` tensor (float32 unless the model is not).
        labels: ``(M,)`` int64 class label of every row.
        ids: ``(M,)`` int64 id of the sample each row came from (its position in the
            ``ids`` passed to the extractor, by default its position in the loader), so
            that rows extracted on several processes can be put back in one order.
    """

    features: dict[str, Tensor]
    labels: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _suggest(name: str, valid: Sequence[str]) -> str:
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
                f"`layers`: the model has no module named {name!r}.{_suggest(str(name), valid)} "
                f"Names come from `model.named_modules()`: {shown}."
            )
        found[name] = modules[name]
    return found


def _torchvision_stage_ends(model: nn.Module, features: nn.Sequential, size: int = 64) -> list[str]:
    """Names ``features.i`` of the last block at each spatial resolution (one dummy forward)."""
    shapes: dict[int, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: shapes.__setitem__(i, tuple(out.shape)))
               for i, m in enumerate(features)]
    in_ch = next((m.in_channels for m in features.modules() if isinstance(m, nn.Conv2d)), 3)
    try:
        with eval_mode(model), torch.no_grad():
            features(torch.zeros(1, in_ch, size, size))
    finally:
        for h in handles:
            h.remove()
    ends = []
    for i in range(len(features)):
        nxt = shapes.get(i + 1)
        if nxt is None or nxt[-1] != shapes[i][-1]:
            ends.append(i)
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
    if isinstance(net, nn.Module) and getattr(net, "STAGES", None):
        return [f"net.{s}" for s in net.STAGES]
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
        names = _torchvision_stage_ends(model, feats)
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


def _check_pool_name(pool: Any, where: str = "`pool`") -> None:
    if callable(pool):
        return
    if pool not in POOLS:
        raise ValueError(f"{where} must be one of {list(POOLS)} or a callable output -> (B, D), got {pool!r}.")


def check_pool(pool: PoolSpec, layers: Sequence[str] | None = None) -> None:
    """Validate ``pool``: a name of :data:`POOLS`, a callable, or a dict ``{layer: pool}``
    (key ``"*"`` = the default for unlisted layers, else ``"avg"``) whose keys are in ``layers``."""
    if isinstance(pool, Mapping):
        for key, value in pool.items():
            _check_pool_name(value, f"`pool[{key!r}]`")
            if layers is not None and key != "*" and key not in layers:
                raise ValueError(f"`pool` names layer {key!r}, which is not among the layers "
                                 f"{list(layers)}.{_suggest(key, list(layers))}")
        return
    _check_pool_name(pool)


def pool_for(pool: PoolSpec, layer: str) -> str | PoolFn:
    """The pool of one layer under a pool spec (see :func:`check_pool`)."""
    if isinstance(pool, Mapping):
        return pool.get(layer, pool.get("*", "avg"))
    return pool


def describe_pool(pool: PoolSpec, layer: str) -> str:
    """A stable text for a layer's pool (cache keys, reports); callables by qualified name."""
    p = pool_for(pool, layer)
    if isinstance(p, str):
        return p
    return getattr(p, "__qualname__", None) or repr(p)


def reduce_output(output: Any, pool: str | PoolFn = "avg", name: str = "layer") -> Tensor:
    """Turn one layer's output ``(B, ...)`` into features ``(B, D)`` (or keep it, ``pool="none"``).

    ``(B, D)`` passes through. ``pool="avg"``: ``(B, C, *spatial)`` (≥ 4-D) → ``(B, C)``;
    ``"cls"`` / ``"mean"``: ``(B, T, C)`` tokens → first token / token mean; ``"channels_last"``:
    ``(B, *spatial, C)`` → ``(B, C)``; ``"flatten"``: ``(B, Π rest)``; a callable maps the output
    to ``(B, D)``. An ambiguous layout (3-D with ``"avg"``) raises ``ValueError`` naming the
    options.
    """
    _check_pool_name(pool)
    if not isinstance(output, Tensor):
        raise ValueError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; hook a submodule "
            "whose output is a single tensor (e.g. the conv or linear inside it), or pass a callable "
            f"pool for it (pool={{{name!r}: lambda out: out[0].mean(1)}})."
        )
    if callable(pool):
        out = pool(output)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != output.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the pool callable of layer {name!r} returned {shape}; it must return "
                             f"(B, D) with B = {output.shape[0]}.")
        return out
    if pool == "none":
        return output
    if output.ndim < 2:
        raise ValueError(
            f"layer {name!r} returned shape {tuple(output.shape)}; a feature layer must keep the "
            "batch axis and at least one feature axis (B, D)."
        )
    if output.ndim == 2:
        return output
    shape = tuple(output.shape)
    if pool == "flatten":
        return output.flatten(1)  # (B, prod(rest))
    if pool == "avg":
        if output.ndim == 3:
            raise ValueError(
                f"layer {name!r} returned a 3-D output {shape}: (B, T, C) tokens or (B, C, L)? 3-D outputs "
                f"require pool='cls' | 'mean' (tokens) | 'flatten', or a callable, for this layer "
                f"(e.g. pool={{{name!r}: 'mean'}})."
            )
        return output.flatten(2).mean(dim=2)  # (B, C, *S) -> (B, C)
    if pool in ("cls", "mean"):
        if output.ndim != 3:
            raise ValueError(
                f"layer {name!r}: pool={pool!r} reads (B, T, C) tokens but the output has shape {shape}; "
                "use pool='avg' for (B, C, H, W) maps or 'channels_last' for (B, H, W, C)."
            )
        return output[:, 0] if pool == "cls" else output.mean(dim=1)
    # channels_last: (B, *S, C) -> (B, C)
    return output.flatten(1, -2).mean(dim=1)


class LayerCapture:
    """Forward hooks that record named layers' outputs; a context manager.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> with LayerCapture(model, ["0", "2"]) as cap:
    ...     _ = model(torch.zeros(5, 4))
    >>> {k: tuple(v.shape) for k, v in cap.outputs.items()}
    {'0': (5, 3), '2': (5, 2)}
    >>> len(model[0]._forward_hooks)  # removed on exit
    0

    ``outputs`` holds, per layer, the (reduced, detached) output of the last call; ``calls``
    counts calls since the last :meth:`clear`, so that a module run twice in one forward pass
    (a shared block) is noticed rather than silently mismatched with the labels. ``pool`` is a
    name, a callable, or a dict ``{layer: pool}`` (see :func:`check_pool`).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str, pool: PoolSpec = "avg",
                 detach: bool = True) -> None:
        check_pool(pool)
        self.modules = resolve_layers(model, layers)
        check_pool(pool, list(self.modules))
        self.pool = pool
        self.detach = detach
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {name: 0 for name in self.modules}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        layer_pool = pool_for(self.pool, name)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = reduce_output(output, layer_pool, name)
            self.outputs[name] = out.detach() if self.detach else out
            self.calls[name] += 1

        return hook

    def clear(self) -> None:
        """Forget the recorded outputs and call counts (between batches)."""
        self.outputs = {}
        self.calls = {name: 0 for name in self.modules}

    def attach(self) -> LayerCapture:
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerCapture:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own previous mode on exit.

    Restoring per module (not ``model.train(previous)``) keeps submodules that were
    deliberately left in eval mode, such as frozen batch-norm layers, as they were.
    """
    previous = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in previous:
            module.training = was_training


def default_unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` from a batch: a ``(x, y, ...)`` tuple/list or a dict with keys such as
    ``x``/``image``/``input`` and ``y``/``label``/``target``/``mask``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
    raise ValueError(
        f"cannot find (inputs, labels) in a batch of type {type(batch).__name__}; batches must be "
        f"(x, y) tuples or dicts with keys {list(_INPUT_KEYS)} and {list(_LABEL_KEYS)}, or pass "
        "`unpack=` a function batch -> (x, y)."
    )


def _batch_ids(ids: Tensor | None, start: int, size: int) -> Tensor:
    if ids is None:
        return torch.arange(start, start + size, dtype=torch.int64)
    if start + size > ids.numel():
        raise ValueError(f"`ids` has {ids.numel()} entries but the loader yields more samples; pass one id per sample.")
    return ids[start:start + size]


def _integer_labels(y: Tensor, name: str) -> Tensor:
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError(f"`{name}` holds non-integer values; pass integer class ids (a mask of 0/1 or class indices).")
    return y.to(torch.int64)


def _run_batches(
    model: nn.Module,
    loader: Iterable[Any],
    cap: LayerCapture,
    unpack: Unpack,
    device: torch.device | str | None,
    forward: Callable[[nn.Module, Tensor], Any] | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, labels)`` per batch after the model has run on it (outputs in ``cap``);
    checks that every hooked layer ran exactly once."""
    for batch in loader:
        x, y = unpack(batch)
        if device is not None:
            x = x.to(device, non_blocking=True)
        cap.clear()
        forward(model, x) if forward is not None else model(x)
        missing = [n for n, c in cap.calls.items() if c != 1]
        if missing:
            counts = {n: cap.calls[n] for n in missing}
            raise ValueError(
                f"`layers`: {counts} ran a number of times other than once in one forward pass; "
                "hook modules that run exactly once per batch (not shared or skipped blocks)."
            )
        yield x, torch.as_tensor(y)


def dataset_labels(dataset: Any) -> Tensor | None:
    """The ``(N,)`` labels of a map-style dataset without reading its inputs, when it exposes them
    (``targets`` / ``labels`` attributes, a ``TensorDataset``'s second tensor, a ``Subset`` of
    those); ``None`` otherwise."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        y = dataset.tensors[1]
        return y.reshape(-1) if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1) else None
    for attr in ("targets", "labels"):
        y = getattr(dataset, attr, None)
        if y is not None and not callable(y):
            try:
                t = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                continue
            if t.ndim == 1 and not t.is_floating_point():
                return t.to(torch.int64)
    return None


def _stratified(labels: Tensor, max_samples: int, seed: int) -> Tensor:
    from tguide.metrics._subset import stratified_subset

    return stratified_subset(labels, max_samples, seed).cpu()


def _subset_loader(loader: Any, max_samples: int | None, seed: int) -> tuple[Any, Tensor | None]:
    """``(loader over the stratified subset, its dataset positions)`` when the subset can be drawn
    up front (a DataLoader over a map-style dataset that exposes its labels), else ``(loader, None)``."""
    from torch.utils.data import DataLoader, IterableDataset, Subset

    if max_samples is None or not isinstance(loader, DataLoader):
        return loader, None
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return loader, None
    labels = dataset_labels(dataset)
    if labels is None or labels.numel() != len(dataset):  # type: ignore[arg-type]
        return loader, None
    if labels.numel() <= max_samples:
        return loader, torch.arange(labels.numel())
    keep = _stratified(labels, max_samples, seed)
    sub = DataLoader(Subset(dataset, keep.tolist()), batch_size=loader.batch_size or 64, shuffle=False,
                     num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    return sub, keep


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str] | str,
    *,
    pool: PoolSpec = "avg",
    max_samples: int | None = None,
    seed: int = 0,
    ids: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    progress: bool | str = False,
) -> FeatureSet:
    """Run ``model`` over ``loader`` (eval mode, no grad) and return each layer's features.

    Args:
        model: any ``nn.Module``; its mode is restored afterwards (per submodule).
        loader: iterable of batches (a DataLoader); see ``unpack``.
        layers: module names from ``model.named_modules()``, :data:`OUTPUT` for the model's
            output, or ``"auto"`` (:func:`auto_layers`). A typo suggests the closest names.
        pool: per-layer reduction: a name of :data:`POOLS`, a callable ``output -> (B, D)``, or a
            dict ``{layer: pool}`` (``"*"``: default for the others); see :func:`reduce_output`.
        max_samples: a seeded (``seed``), class-stratified random subset of this many samples
            (every class keeps one at least; ``tguide.metrics._subset.stratified_subset``). For a
            DataLoader whose dataset exposes its labels only the subset is read; otherwise every
            sample is run and the rows are subsampled afterwards. ``None``: every sample.
        seed: seed of the ``max_samples`` draw.
        ids: one int id per sample in loader order (default ``0..N-1``), returned in ``ids``
            (for the subset: the ids of the rows kept).
        device: move inputs there (default: leave them where the loader puts them).
        unpack: ``batch -> (x, y)``; default :func:`default_unpack`.
        forward: ``(model, x) -> anything``; default ``model(x)``.
        progress: show a tqdm bar over the batches (a string is its description).

    Returns:
        :class:`FeatureSet` with ``features[layer] (N, D)``, ``labels (N,)`` int64 and ``ids (N,)``.
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ValueError(f"`max_samples` must be ≥ 1 or None, got {max_samples}.")
    unpack = unpack or default_unpack
    id_tensor = torch.as_tensor(ids, dtype=torch.int64).flatten() if ids is not None else None
    loader, positions = _subset_loader(loader, max_samples, seed)
    if positions is not None and id_tensor is not None:
        if id_tensor.numel() < int(positions.max()) + 1:
            raise ValueError(f"`ids` has {id_tensor.numel()} entries but the loader yields more samples; "
                             "pass one id per sample.")
        id_tensor = id_tensor[positions]
    elif positions is not None:
        id_tensor = positions
    chunks: dict[str, list[Tensor]] = {}
    labels: list[Tensor] = []
    seen = 0
    batches: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        batches = tqdm(loader, total=total, desc=progress if isinstance(progress, str) else "features",
                       unit="batch", leave=False, dynamic_ncols=True)
    with LayerCapture(model, layers, pool=pool) as cap, eval_mode(model), torch.no_grad():
        for x, y in _run_batches(model, batches, cap, unpack, device, forward):
            if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
                raise ValueError(
                    f"labels of a batch have shape {tuple(y.shape)}; image-level features need one class id "
                    "per sample (B,). For segmentation masks use extract_pixel_features."
                )
            b = y.shape[0]
            for name, out in cap.outputs.items():
                if out.shape[0] != b:
                    raise ValueError(
                        f"layer {name!r} output has {out.shape[0]} rows for a batch of {b}; hook a layer "
                        "that keeps the batch axis first."
                    )
                if out.ndim != 2:
                    raise ValueError(f"layer {name!r} output has shape {tuple(out.shape)}; pass a pool that "
                                     "reduces it to (B, D): 'avg', 'cls', 'mean', 'channels_last' or 'flatten'.")
                chunks.setdefault(name, []).append(out)
            labels.append(_integer_labels(y.reshape(-1), "labels"))
            seen += b
    if progress and hasattr(batches, "close"):
        batches.close()  # type: ignore[union-attr]
    if seen == 0:
        raise ValueError("`loader` yielded no samples; pass a non-empty probe loader.")
    lab = torch.cat(labels).cpu()
    feats = {name: torch.cat(chunks[name]) for name in cap.modules}
    row_ids = _batch_ids(id_tensor, 0, seen)
    if max_samples is not None and positions is None and seen > max_samples:
        keep = _stratified(lab, max_samples, seed)
        feats = {name: f[keep.to(f.device)] for name, f in feats.items()}
        lab, row_ids = lab[keep], row_ids[keep]
    return FeatureSet(features=feats, labels=lab.to(next(iter(feats.values())).device), ids=row_ids)
