"""The base of the torchmetrics classes: per-sample ``cat`` states, a reservoir, ``compute()`` → functional.

Two kinds of classes derive from :class:`FeatureMetric`:

* **Statistics-backed** (:mod:`tguide.metrics.stateful.streaming`: :class:`HScore`,
  :class:`HScoreShrinkage`, :class:`TransRate`, :class:`TransRateComparable`, :class:`LogME`,
  :class:`GBC`, :class:`NCE`): ``update`` folds each batch into the score's statistics type
  (:mod:`tguide.metrics.statistics`), ``compute()`` merges every process's statistics and calls
  the score's one ``*_from_statistics`` function, the same one the functional calls.
* **Sample path** (:mod:`tguide.metrics.stateful.samples`: :class:`LEEP`, :class:`OTCE`, and any
  class with ``null``): the samples are kept in ``cat`` list states, so ``compute()`` under DDP
  sees every rank's samples (torchmetrics gathers them, unequal shard sizes included), and then
  calls the functional on all of them.

On the sample path memory can be bounded with ``max_stored``: each process then keeps a uniform
random sample of at most ``max_stored`` rows (per domain for OTCE) of everything it was given,
by reservoir sampling (Vitter's Algorithm R [1], vectorised per batch, with its own generator
seeded by ``seed``). Under DDP, ``compute()`` sees up to ``world_size × max_stored`` rows.
(This is a memory cap on a stream, not the class-stratified ``max_samples`` subset of the
functional metrics.)

Calling a metric object (``metric(x, y)``, torchmetrics' ``forward``) only updates it and
returns ``None``: a transferability score of one batch is neither meaningful nor cheap.

References:
    [1] J. S. Vitter, "Random Sampling with a Reservoir", ACM TOMS 11(1), 1985.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from tguide.metrics._validate import as_tensor, check_features, check_labels
from tguide.metrics.null import label_shuffle_null

__all__ = ["FeatureMetric", "FeaturesLabelsMetric", "batch_labels", "owned"]


def batch_labels(labels: Any, n: int, name: str, device: torch.device) -> Tensor:
    """Validated raw (not remapped) int64 labels of one batch, ``(n,)``, on ``device`` (a copy)."""
    check_labels(labels, n, name, min_classes=1)
    y = as_tensor(labels, name).detach()
    return y.reshape(n).to(device=device, dtype=torch.int64, copy=True)


def owned(x: Tensor, given: Any) -> Tensor:
    """``x``, cloned if it still shares memory with the caller's input (states must not alias it)."""
    if isinstance(given, (Tensor,)) or hasattr(given, "__array_interface__"):
        if x.numel() and x.data_ptr() == as_tensor(given, "input").data_ptr():
            return x.clone()
    return x


class FeatureMetric(Metric):
    """Base class: per-sample ``cat`` states, optional reservoir, ``compute()`` → functional.

    Subclasses name their per-sample states in ``_fields`` (first one: the ``(N, ...)``
    tensor whose rows define the samples), validate a batch in ``update`` and hand it to
    :meth:`_store`, and call their functional on :meth:`_samples` in ``compute``.

    Args:
        max_stored: keep at most this many samples per process (per domain for OTCE),
            a uniform random subset of all samples seen (reservoir sampling), so that memory
            stays bounded on a long stream. ``None`` keeps everything.
        seed: seed of the reservoir's random generator (reset by :meth:`reset`).
        null: ``None`` (default): ``compute()`` returns the score, a 0-d tensor. An integer
            ``P``: ``compute()`` returns the score with its label-shuffle null over ``P``
            permutations (:func:`~tguide.metrics.null.label_shuffle_null`) as a dict of 0-d
            tensors ``{"score", "corrected", "z", "p_value", "null_mean", "null_std"}``,
            ready for ``log_dict``.
        null_seed: seed of those permutations.
        kwargs: passed to :class:`torchmetrics.Metric` (``compute_on_cpu``,
            ``dist_sync_fn``, ``process_group``, ...).

    Under DDP call ``compute()`` on every rank (it gathers), and give every rank at least
    one batch: torchmetrics cannot gather a rank whose list states are still empty.
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    _fields: ClassVar[tuple[str, ...]] = ("features", "labels")
    # set in __init__ (declared here: torchmetrics' Metric.__setattr__ hides them from mypy)
    max_stored: int | None
    seed: int
    null: int | None
    null_seed: int
    _gen: torch.Generator

    def __init__(
        self, max_stored: int | None = None, seed: int = 0, null: int | None = None, null_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if null is not None and (isinstance(null, bool) or not isinstance(null, numbers.Integral) or null < 2):
            raise ValueError(f"`null` must be None or the number of label permutations (an integer ≥ 2), got {null!r}.")
        if isinstance(null_seed, bool) or not isinstance(null_seed, numbers.Integral):
            raise ValueError(f"`null_seed` must be an integer, got {null_seed!r}.")
        self.null = None if null is None else int(null)
        self.null_seed = int(null_seed)
        if max_stored is not None and (
            isinstance(max_stored, bool) or not isinstance(max_stored, numbers.Integral) or max_stored < 1
        ):
            raise ValueError(f"`max_stored` must be a positive integer or None (keep all), got {max_stored!r}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer, got {seed!r}.")
        self.max_stored = None if max_stored is None else int(max_stored)
        self.seed = int(seed)
        self._register_states()
        self._gen = torch.Generator().manual_seed(self.seed)
        self._seen: dict[int, int] = {}  # group -> samples seen by this process
        self._slot: dict[int, int] = {}  # group -> index of its reservoir in the list states

    def _register_states(self) -> None:
        """One ``cat`` list state per sample field."""
        for name in self._fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    # ------------------------------------------------------------------ storage

    def _store(self, rows: tuple[Tensor, ...], group: int = 0) -> None:
        """Append one batch (one tensor per field, same first dimension), or reservoir it."""
        first = getattr(self, self._fields[0])
        if len(first) and first[0].shape[1:] != rows[0].shape[1:]:
            raise ValueError(
                f"`{self._fields[0]}` of this batch have shape {tuple(rows[0].shape)} but earlier batches had "
                f"(*, {', '.join(map(str, first[0].shape[1:]))}); feed one layer's features per metric object."
            )
        if self.max_stored is None:
            for name, r in zip(self._fields, rows):
                getattr(self, name).append(r)
            return
        self._reservoir_add(rows, group)

    def _reservoir_add(self, rows: tuple[Tensor, ...], group: int) -> None:
        r"""Algorithm R on a batch: sample number ``t`` (0-based, ``t ≥ cap``) replaces a
        uniform slot with probability ``cap/(t+1)``; later samples win a contested slot."""
        cap = self.max_stored
        assert cap is not None, "the reservoir is used only with max_stored (see _store)"
        if group not in self._slot:
            self._slot[group] = len(getattr(self, self._fields[0]))
            for name, r in zip(self._fields, rows):
                getattr(self, name).append(r[:0].clone())
        k = self._slot[group]
        bufs = [getattr(self, name)[k] for name in self._fields]
        rows = tuple(r.to(bufs[0].device) for r in rows)
        b = rows[0].shape[0]
        seen = self._seen.get(group, 0)
        n_fill = min(max(cap - bufs[0].shape[0], 0), b)
        if n_fill:
            bufs = [torch.cat([buf, r[:n_fill]]) for buf, r in zip(bufs, rows)]
        rest = b - n_fill
        if rest:
            t = float(seen + n_fill) + torch.arange(rest, dtype=torch.float64)  # global index of each row
            j = torch.floor(torch.rand(rest, generator=self._gen, dtype=torch.float64) * (t + 1)).long()
            hit = j < cap
            if bool(hit.any()):
                winner = torch.full((cap,), -1, dtype=torch.long)
                winner.scatter_reduce_(0, j[hit], torch.arange(rest)[hit], reduce="amax")
                slots = torch.nonzero(winner >= 0).flatten()
                src = (winner[slots] + n_fill).to(bufs[0].device)
                slots = slots.to(bufs[0].device)
                for buf, r in zip(bufs, rows):
                    buf[slots] = r[src]
        for name, buf in zip(self._fields, bufs):
            getattr(self, name)[k] = buf
        self._seen[group] = seen + b

    def _samples(self) -> tuple[Tensor, ...]:
        """Every stored sample (all ranks' after sync), one tensor per field."""
        first = getattr(self, self._fields[0])
        if (isinstance(first, list) and sum(t.shape[0] for t in first) == 0) or (
            isinstance(first, Tensor) and first.shape[0] == 0
        ):
            raise ValueError(
                f"{type(self).__name__}.compute() was called before any update(); feed at least one batch "
                f"with update(...) first (every DDP rank must receive at least one batch)."
            )
        return tuple(dim_zero_cat(getattr(self, name)) for name in self._fields)

    def reset(self) -> None:
        """Clear every sample and restart the reservoir's generator from ``seed``."""
        super().reset()
        self._seen.clear()
        self._slot.clear()
        self._gen.manual_seed(self.seed)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Update only (no per-batch score); returns ``None``."""
        self.update(*args, **kwargs)

    # ------------------------------------------------------------------ compute
    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """``(function, args, kwargs)`` of the functional on the stored samples (labels last)."""
        raise NotImplementedError

    def compute(self) -> Any:
        """The score of every stored sample (all ranks): a 0-d tensor, or with ``null`` the dict of
        :meth:`~tguide.metrics.functional.permutation.NullCalibrated.as_dict`."""
        fn, args, kwargs = self._call()
        if self.null is None:
            out = fn(*args, **kwargs)
            return getattr(out, "score", out)
        return label_shuffle_null(fn, *args, n_perm=self.null, seed=self.null_seed, **kwargs).as_dict()


class FeaturesLabelsMetric(FeatureMetric):
    """Metrics of ``(features (N, D), labels (N,))``."""

    def update(self, features: Any, labels: Any) -> None:
        """Add a batch: ``features (B, D)`` of one layer and their ``labels (B,)``."""
        x = check_features(features, "features").detach()
        y = batch_labels(labels, x.shape[0], "labels", x.device)
        self._store((owned(x, features), y))
