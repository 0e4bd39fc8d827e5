"""Named-layer feature capture through forward hooks.

Transferability metrics score the representation a network computes at some layer. This
module reads those representations without touching the network's code: a forward hook on
each named module (names as in ``model.named_modules()``, e.g. ``"net.conv2"``) copies the
module's output while the model runs, and the hooks are removed afterwards, also when the
forward pass raises.

Image-level mode (:func:`extract_features`): every sample gives one row per layer.
Convolutional maps ``(B, C, H, W)`` are reduced by ``pool``:

.. math::

    \\text{avg}: \\; f_c = \\frac{1}{HW} \\sum_{h,w} x_{c,h,w} \\in \\mathbb{R}^{C},
    \\qquad \\text{flatten}: \\; f = \\operatorname{vec}(x) \\in \\mathbb{R}^{CHW}.

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
    "POOLS",
    "FeatureSet",
    "LayerCapture",
    "default_unpack",
    "eval_mode",
    "extract_features",
    "reduce_output",
    "resolve_layers",
]

Pool = Literal["avg", "flatten", "none"]
POOLS: tuple[str, ...] = ("avg", "flatten", "none")
Unpack = Callable[[Any], tuple[Tensor, Tensor]]

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


def resolve_layers(model: nn.Module, layers: Sequence[str] | str) -> dict[str, nn.Module]:
    """Map each name in ``layers`` to its module in ``model.named_modules()``.

    Raises ``ValueError`` for an empty list, a duplicate, or a name the model does not have
    (the message lists the closest names and some valid ones).
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("`layers` is empty; name at least one module, e.g. layers=['net.fc1'].")
    dupes = sorted({name for name in layers if layers.count(name) > 1})
    if dupes:
        raise ValueError(f"`layers` names {dupes} more than once; list each layer once.")
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in layers:
        if not isinstance(name, str) or not name or name not in modules:
            valid = [n for n in modules if n]
            close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            raise ValueError(
                f"`layers`: the model has no module named {name!r}.{hint} "
                f"Names come from `model.named_modules()`: {shown}."
            )
        found[name] = modules[name]
    return found


def reduce_output(output: Any, pool: str = "avg", name: str = "layer") -> Tensor:
    """Turn one layer's output ``(B, ...)`` into features ``(B, D)`` (or keep it, ``pool="none"``).

    ``(B, D)`` passes through. ``(B, C, *spatial)`` becomes ``(B, C)`` with ``pool="avg"``
    (mean over the spatial axes, i.e. global average pooling) or ``(B, C·Π spatial)`` with
    ``pool="flatten"``. ``pool="none"`` returns the output unchanged.
    """
    if pool not in POOLS:
        raise ValueError(f"`pool` must be one of {list(POOLS)}, got {pool!r}.")
    if not isinstance(output, Tensor):
        raise ValueError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; hook a submodule "
            "whose output is a single tensor (e.g. the conv or linear inside it)."
        )
    if pool == "none":
        return output
    if output.ndim < 2:
        raise ValueError(
            f"layer {name!r} returned shape {tuple(output.shape)}; a feature layer must keep the "
            "batch axis and at least one feature axis (B, D)."
        )
    if output.ndim == 2:
        return output
    if pool == "avg":
        return output.flatten(2).mean(dim=2)  # (B, C, *S) -> (B, C)
    return output.flatten(1)  # (B, C * prod(S))


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
    (a shared block) is noticed rather than silently mismatched with the labels.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str, pool: str = "avg",
                 detach: bool = True) -> None:
        if pool not in POOLS:
            raise ValueError(f"`pool` must be one of {list(POOLS)}, got {pool!r}.")
        self.modules = resolve_layers(model, layers)
        self.pool = pool
        self.detach = detach
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {name: 0 for name in self.modules}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = reduce_output(output, self.pool, name)
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


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str] | str,
    *,
    pool: str = "avg",
    max_samples: int | None = None,
    ids: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
) -> FeatureSet:
    """Run ``model`` over ``loader`` (eval mode, no grad) and return each layer's features.

    Args:
        model: any ``nn.Module``; its mode is restored afterwards (per submodule).
        loader: iterable of batches (a DataLoader); see ``unpack``.
        layers: module names from ``model.named_modules()``.
        pool: ``"avg"`` (global average pooling of conv maps), ``"flatten"``, or ``"none"``
            (outputs must then already be ``(B, D)``).
        max_samples: stop after this many samples (the first ones the loader yields).
        ids: one int id per sample in loader order (default ``0..N-1``), returned in ``ids``.
        device: move inputs there (default: leave them where the loader puts them).
        unpack: ``batch -> (x, y)``; default :func:`default_unpack`.
        forward: ``(model, x) -> anything``; default ``model(x)``.

    Returns:
        :class:`FeatureSet` with ``features[layer] (N, D)``, ``labels (N,)`` int64 and ``ids (N,)``.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_samples` must be ≥ 1 or None, got {max_samples}.")
    unpack = unpack or default_unpack
    id_tensor = torch.as_tensor(ids, dtype=torch.int64).flatten() if ids is not None else None
    chunks: dict[str, list[Tensor]] = {}
    labels: list[Tensor] = []
    seen = 0
    with LayerCapture(model, layers, pool=pool) as cap, eval_mode(model), torch.no_grad():
        for x, y in _run_batches(model, loader, cap, unpack, device, forward):
            if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
                raise ValueError(
                    f"labels of a batch have shape {tuple(y.shape)}; image-level features need one class id "
                    "per sample (B,). For segmentation masks use extract_pixel_features."
                )
            b = y.shape[0]
            take = b if max_samples is None else min(b, max_samples - seen)
            for name, out in cap.outputs.items():
                if out.shape[0] != b:
                    raise ValueError(
                        f"layer {name!r} output has {out.shape[0]} rows for a batch of {b}; hook a layer "
                        "that keeps the batch axis first."
                    )
                if out.ndim != 2:
                    raise ValueError(f"layer {name!r} output has shape {tuple(out.shape)}; use pool='avg' or 'flatten'.")
                chunks.setdefault(name, []).append(out[:take])
            labels.append(_integer_labels(y.reshape(-1)[:take], "labels"))
            seen += take
            if max_samples is not None and seen >= max_samples:
                break
    if seen == 0:
        raise ValueError("`loader` yielded no samples; pass a non-empty probe loader.")
    lab = torch.cat(labels).cpu()
    return FeatureSet(
        features={name: torch.cat(chunks[name]) for name in cap.modules},
        labels=lab.to(next(iter(chunks.values()))[0].device),
        ids=_batch_ids(id_tensor, 0, seen),
    )
