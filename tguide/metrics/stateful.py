"""Stateful (torchmetrics) versions of the transferability metrics.

Two kinds of classes (see the table in :class:`StreamingMetric`):

* **Exact streaming** (:class:`HScore`, :class:`HScoreShrinkage`, :class:`TransRate`,
  :class:`TransRateComparable`, :class:`LogME`, :class:`GBC`, :class:`NCE`): ``update`` folds
  each batch into exact sufficient statistics (:mod:`tguide.metrics.streaming`: per-class
  means, centred Grams, moments, count tables, float64), so memory is O(C·D²) whatever N and
  ``compute()`` equals the functional on the concatenated data (to roundoff, ~1e-12
  relative). Under DDP each process's statistics are gathered (O(C·D²) bytes per process,
  classes may differ between processes) and merged by Chan et al.'s pairwise update.
  With ``null=P`` (label-shuffle calibration) a streaming class keeps the samples instead:
  shuffling labels needs them.
* **Sample path** (:class:`LEEP`, :class:`OTCE`, and any class with ``null``): the samples
  are kept in ``cat`` list states, so ``compute()`` under DDP sees every rank's samples
  (torchmetrics gathers them, unequal shard sizes included), and then calls the functional
  on all of them. LEEP needs every sample's ``log Σ_z θ_iz P̂(y_i|z)`` with the *final*
  ``P̂(y|z)``: not a function of any fixed-size statistic. OTCE needs the samples
  themselves (a coupling between them).

On the sample path memory can be bounded with ``max_stored``: each process then keeps a uniform random
sample of at most ``max_stored`` rows (per domain for :class:`OTCE`) of everything it
was given, by reservoir sampling (Vitter's Algorithm R [1], vectorised per batch, with
its own generator seeded by ``seed``). Under DDP, ``compute()`` sees up to
``world_size × max_stored`` rows. (This is a memory cap on a stream, not the
class-stratified ``max_samples`` subset of the functional metrics; ``max_samples`` is
accepted here as a deprecated alias of ``max_stored``.)

Calling a metric object (``metric(x, y)``, torchmetrics' ``forward``) only updates it and
returns ``None``: a transferability score of one batch is neither meaningful nor cheap.

References:
    [1] J. S. Vitter, "Random Sampling with a Reservoir", ACM TOMS 11(1), 1985.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from tguide._deprecation import renamed_arguments, stacklevel_outside
from tguide.metrics._validate import as_tensor, check_features, check_labels, check_probs
from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import leep, nce
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.otce import OTCEResult, _check_solver_options, _check_weights, otce
from tguide.metrics.functional.transrate import transrate, transrate_comparable
from tguide.metrics.null import label_shuffle_null
from tguide.metrics import streaming as _st

__all__ = ["FeatureMetric", "StreamingMetric", "HScore", "HScoreShrinkage", "TransRate", "TransRateComparable",
           "LogME", "GBC", "LEEP", "NCE", "OTCE"]


def _batch_labels(labels: Any, n: int, name: str, device: torch.device) -> Tensor:
    """Validated raw (not remapped) int64 labels of one batch, ``(n,)``, on ``device``."""
    check_labels(labels, n, name, min_classes=1)
    y = as_tensor(labels, name).detach()
    return y.reshape(n).to(device=device, dtype=torch.int64, copy=True)


def _owned(x: Tensor, given: Any) -> Tensor:
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
            stays bounded on a long stream. ``None`` keeps everything. (Deprecated alias:
            ``max_samples``.)
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

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, max_stored: int | None = None, seed: int = 0, null: int | None = None, null_seed: int = 0,
                 **kwargs: Any) -> None:
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
        cap = int(self.max_stored)  # type: ignore[arg-type]
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

    def forward(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
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


class _FeaturesLabels(FeatureMetric):
    """Metrics of ``(features (N, D), labels (N,))``."""

    def update(self, features: Any, labels: Any) -> None:  # type: ignore[override]
        """Add a batch: ``features (B, D)`` of one layer and their ``labels (B,)``."""
        x = check_features(features, "features").detach()
        y = _batch_labels(labels, x.shape[0], "labels", x.device)
        self._store((_owned(x, features), y))


_PLACEHOLDER_DTYPE = {"key": torch.int64}


class StreamingMetric(_FeaturesLabels):
    r"""Base of the exact-streaming classes: sufficient statistics instead of samples.

    =========================  ===============================================  ==============
    class                      statistics kept (float64)                        memory
    =========================  ===============================================  ==============
    :class:`HScore`            n, mean, centred Gram; per class n_c, mean_c     D² + C·D
    :class:`HScoreShrinkage`   + ``Σ‖z‖²z``, ``Σ‖z‖⁴`` (Ledoit–Wolf intensity)   D² + C·D
    :class:`TransRate`,        per class n_c, mean_c, centred Gram              C·D²
    :class:`TransRateComparable`
    :class:`LogME` (N > D)     n, mean, centred Gram; per class n_c, mean_c     D² + C·D
                               (``FᵀF``, ``FᵀY``, ``‖y‖²`` follow); the rows
                               too while a process has seen ≤ D of them
    :class:`GBC`               per class n_c, mean_c, per-dimension variance    C·D
    :class:`NCE`               counts of (source label, label) pairs            Cs·C
    =========================  ===============================================  ==============

    ``update`` casts each batch to float64 first (as the functionals do), so float32
    input gives the functional's value on that same float32 data; batches may come in any
    order and any size. ``compute()`` equals the functional on all the data concatenated up
    to float64 roundoff (the tests ask for 1e-9 relative; typically ~1e-13). Statistics are
    merged by Chan et al.'s pairwise update of centred statistics
    (:mod:`tguide.metrics.streaming`), never as raw uncentred sums.

    Under DDP each statistic is a list state with ``dist_reduce_fx=None``: torchmetrics
    all-gathers every process's record (O(C·D²) bytes per process, the per-class tensors
    padded to the largest class count), and ``compute()`` merges them by label value, so
    the processes may see different label sets. A process without data sends empty
    placeholders (no deadlock). LogME for N ≤ D keeps the rows (at most D per process,
    the size of one Gram matrix) and calls the functional on them: its N ≤ D route needs
    the N×N Gram of the samples.

    ``null=P`` (label-shuffle calibration) keeps the samples, like the sample-path classes
    (shuffling labels needs them), and honours ``max_stored``; without ``null``,
    ``max_stored`` is ignored with a warning (memory no longer grows with N).
    """

    #: record prefix -> statistics kept: ``"g"`` the whole stream, ``"c"`` per class
    _stats: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: keep the rows while a process has seen at most D of them (LogME's N ≤ D route)
    _keep_rows: ClassVar[bool] = False

    @property
    def streaming(self) -> bool:
        """Whether this object keeps sufficient statistics (``False``: it keeps samples)."""
        return self.null is None and self._streamable()

    def _streamable(self) -> bool:
        return True

    def _register_states(self) -> None:
        if not self.streaming:
            super()._register_states()
            return
        if self.max_stored is not None:
            warnings.warn(
                f"{type(self).__name__}: `max_stored` has no effect: without `null` the class keeps exact "
                "sufficient statistics (memory O(C·D²) whatever N), not samples.", UserWarning, stacklevel=stacklevel_outside("tguide.metrics"))
        self._ndim: dict[str, int] = {}
        for prefix, fields in self._stats.items():
            for field in ("key", "n", *fields):
                self.add_state(f"{prefix}_{field}", default=[], dist_reduce_fx=None)
                self._ndim[f"{prefix}_{field}"] = _st.FIELD_NDIM[field]
        if self._keep_rows:
            for name, ndim in (("rows_features", 2), ("rows_labels", 1)):
                self.add_state(name, default=[], dist_reduce_fx=None)
                self._ndim[name] = ndim

    # ------------------------------------------------------------------ records
    def _record(self, prefix: str) -> dict[str, Tensor] | None:
        """This process's record of ``prefix`` (before any sync), or ``None``."""
        fields = ("key", "n", *self._stats[prefix])
        lists = [getattr(self, f"{prefix}_{f}") for f in fields]
        return dict(zip(fields, (lst[0] for lst in lists))) if len(lists[0]) else None

    def _set_record(self, prefix: str, rec: dict[str, Tensor]) -> None:
        for field, value in rec.items():
            lst = getattr(self, f"{prefix}_{field}")
            lst.clear()
            lst.append(value)

    def _merged(self, prefix: str) -> dict[str, Tensor] | None:
        """Every entry of ``prefix`` (one per process after a sync) merged, sorted by key."""
        fields = ("key", "n", *self._stats[prefix])
        lists = [getattr(self, f"{prefix}_{f}") for f in fields]
        return _st.merge_all(dict(zip(fields, entry)) for entry in zip(*lists))

    def _fold(self, prefix: str, x: Tensor | None, keys: Tensor) -> dict[str, Tensor]:
        rec = _st.merge(self._record(prefix), _st.batch_record(x, keys, self._stats[prefix]))
        self._set_record(prefix, rec)
        return rec

    def state_nbytes(self) -> int:
        """Bytes of this process's statistics (what it sends to each peer when ``compute()`` syncs)."""
        total = 0
        for name in self._ndim:
            total += sum(t.numel() * t.element_size() for t in getattr(self, name))
        return total

    # ------------------------------------------------------------------ update / compute
    def update(self, features: Any, labels: Any) -> None:  # type: ignore[override]
        """Add a batch: ``features (B, D)`` of one layer and their ``labels (B,)``."""
        if not self.streaming:
            super().update(features, labels)
            return
        x = check_features(features, "features").detach()
        y = _batch_labels(labels, x.shape[0], "labels", x.device)
        first = self._record(next(iter(self._stats)))
        if first is not None and "mean" in first and first["mean"].shape[1] != x.shape[1]:
            raise ValueError(
                f"`features` of this batch have shape {tuple(x.shape)} but earlier batches had "
                f"(*, {first['mean'].shape[1]}); feed one layer's features per metric object."
            )
        n_seen = 0
        for prefix in self._stats:
            keys = torch.zeros_like(y)[:, None] if prefix == "g" else y[:, None]
            rec = self._fold(prefix, x, keys)
            n_seen = int(rec["n"].sum())
        if self._keep_rows:
            if n_seen <= x.shape[1]:
                self.rows_features.append(_owned(x, features))
                self.rows_labels.append(y)
            else:
                self.rows_features.clear()
                self.rows_labels.clear()

    def _sync_dist(self, dist_sync_fn: Callable = None, process_group: Any = None) -> None:  # type: ignore[override]
        """Give every empty statistic an empty placeholder (so a process without data can gather)."""
        if self.streaming:
            for name, ndim in self._ndim.items():
                lst = getattr(self, name)
                if isinstance(lst, list) and not lst:
                    dtype = torch.int64 if name.endswith(("_key", "_labels")) else torch.float64
                    lst.append(torch.zeros((0,) * ndim, dtype=dtype, device=self.device))
        kwargs = {} if dist_sync_fn is None else {"dist_sync_fn": dist_sync_fn}
        super()._sync_dist(process_group=process_group, **kwargs)

    def compute(self) -> Any:
        """The score of all data (all ranks), a 0-d float64 tensor (with ``null``: the dict of
        :meth:`~tguide.metrics.functional.permutation.NullCalibrated.as_dict`)."""
        if not self.streaming:
            return super().compute()
        recs = {prefix: self._merged(prefix) for prefix in self._stats}
        if any(r is None for r in recs.values()):
            raise ValueError(
                f"{type(self).__name__}.compute() was called before any update(); feed at least one batch "
                f"with update(...) first."
            )
        if self._keep_rows:
            n = int(next(iter(recs.values()))["n"].sum())
            rows = [t for t in self.rows_features if t.shape[0]]
            if rows and n <= rows[0].shape[1]:
                x = torch.cat(rows)
                y = torch.cat([t for t in self.rows_labels if t.shape[0]])
                fn, _, kwargs = self._call()
                return fn(x, y, **kwargs)
        return self._from_stats(recs)

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        fn, kwargs = self._functional()
        return fn, (self._samples() if not self.streaming else ()), kwargs

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        raise NotImplementedError

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        raise NotImplementedError


class HScore(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore` (Bao et al., ICIP 2019).

    ``update(features, labels)``; ``compute()`` = the functional on every sample. Exact
    streaming (:class:`StreamingMetric`): keeps n, the mean, the centred D×D Gram and the
    per-class means and counts.

    Example:
        >>> import torch
        >>> m = HScore()
        >>> f, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> m.update(f[:25], y[:25]); m.update(f[25:], y[25:])
        >>> bool(torch.isclose(m.compute(), hscore(f, y)))
        True
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"g": ("mean", "m2"), "c": ("mean",)}

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return hscore, {}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.hscore_from_stats(recs["g"], recs["c"])


class HScoreShrinkage(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore_shrinkage` (Ibrahim et al., WACV 2023).

    Exact streaming: as :class:`HScore` plus ``Σ‖z‖²z`` and ``Σ‖z‖⁴`` about the running mean
    (shifted exactly to the final mean), which the Ledoit–Wolf intensity needs.
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"g": ("mean", "m2", "t3", "q4"), "c": ("mean",)}

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return hscore_shrinkage, {}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.hscore_shrinkage_from_stats(recs["g"], recs["c"])


class TransRate(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate` (Huang et al., ICML 2022).

    Exact streaming: per-class counts, means and centred D×D Grams (memory C·D²; the class
    Grams about the global mean follow exactly).

    Args:
        eps: distortion ε of the coding rate. Other arguments: :class:`FeatureMetric`.
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean", "m2")}

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, eps: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return transrate, {"eps": self.eps}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.transrate_from_stats(recs["c"], float(self.eps))


class TransRateComparable(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate_comparable` (width- and scale-comparable).

    Exact streaming, with the statistics of :class:`TransRate`.

    Args:
        rank, eps: see the functional. Other arguments: :class:`FeatureMetric`.
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean", "m2")}

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, rank: int = 32, eps: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = rank
        self.eps = eps

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return transrate_comparable, {"rank": self.rank, "eps": self.eps}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.transrate_comparable_from_stats(recs["c"], self.rank, self.eps)


class LogME(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.logme.logme` (You et al., ICML 2021).

    Exact streaming for N > D (``FᵀF``, ``FᵀY``, ``‖y‖²``, n: the functional's spectrum and
    fixed point run on them). For N ≤ D the functional needs the N×N Gram of the samples,
    so each process also keeps its rows while it has seen at most D of them (≤ D×D numbers)
    and drops them after.

    Args:
        tol, max_iter: the evidence fixed point's limits. Other arguments: :class:`FeatureMetric`.
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"g": ("mean", "m2"), "c": ("mean",)}
    _keep_rows: ClassVar[bool] = True

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, tol: float = 1e-7, max_iter: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tol = tol
        self.max_iter = max_iter

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return logme, {"tol": self.tol, "max_iter": self.max_iter}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.logme_from_stats(recs["g"], recs["c"], self.tol, self.max_iter)


class GBC(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.gbc.gbc` (Pándy et al., CVPR 2022).

    Exact streaming when ``pca_dim is None`` (per-class counts, means and per-dimension
    variances: memory C·D). With ``pca_dim`` the PCA needs every sample, so the samples are
    kept (sample path).

    Args:
        gaussian, pca_dim, min_variance, reference_code: see the functional. Other arguments:
            :class:`FeatureMetric`.
    """

    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean", "m2d")}

    def __init__(self, gaussian: str = "spherical", pca_dim: int | None = None, min_variance: float = 1e-4,
                 reference_code: bool = False, **kwargs: Any) -> None:
        self.pca_dim = pca_dim  # read by _register_states (called by the base __init__)
        super().__init__(**kwargs)
        self.gaussian = gaussian
        self.min_variance = min_variance
        self.reference_code = reference_code

    def _streamable(self) -> bool:
        return self.pca_dim is None

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        from tguide.metrics.functional.gbc import gbc

        return gbc, {"gaussian": self.gaussian, "pca_dim": self.pca_dim, "min_variance": self.min_variance,
                     "reference_code": self.reference_code}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        _, kwargs = self._functional()
        return _st.gbc_from_stats(recs["c"], **kwargs)


class LEEP(FeatureMetric):
    """Stateful :func:`~tguide.metrics.functional.leep.leep` (Nguyen et al., ICML 2020).

    ``update(source_probs, labels)``.
    """

    _fields: ClassVar[tuple[str, ...]] = ("source_probs", "labels")

    def update(self, source_probs: Any, labels: Any) -> None:  # type: ignore[override]
        """Add a batch: source-model probabilities ``(B, Cs)`` (rows sum to 1) and target labels ``(B,)``."""
        p = check_probs(source_probs, "source_probs").detach()
        y = _batch_labels(labels, p.shape[0], "labels", p.device)
        self._store((_owned(p, source_probs), y))

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return leep, self._samples(), {}


class NCE(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.leep.nce` (Tran et al., ICCV 2019).

    ``update(source_labels, labels)``. Exact streaming: the count table of (source label,
    label) pairs (memory Cs·C).
    """

    _fields: ClassVar[tuple[str, ...]] = ("source_labels", "labels")
    _stats: ClassVar[dict[str, tuple[str, ...]]] = {"t": ()}

    def update(self, source_labels: Any, labels: Any) -> None:  # type: ignore[override]
        """Add a batch: source-task labels ``(B,)`` (e.g. the source model's argmax) and target labels ``(B,)``."""
        z = as_tensor(source_labels, "source_labels")
        n = z.shape[0] if z.ndim >= 1 else 0
        z = _batch_labels(source_labels, n, "source_labels", z.device)
        y = _batch_labels(labels, n, "labels", z.device)
        if self.streaming:
            self._fold("t", None, torch.stack([z, y], dim=1))
        else:
            self._store((z, y))

    def _functional(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        return nce, {}

    def _from_stats(self, recs: dict[str, dict[str, Tensor]]) -> Tensor:
        return _st.nce_from_counts(recs["t"])


_DOMAINS = {"source": 0, "target": 1}


class OTCE(FeatureMetric):
    """Stateful :func:`~tguide.metrics.functional.otce.otce` (Tan et al., CVPR 2021).

    ``update(features, labels, domain="source"|"target")``: both domains' features of
    one layer go into one metric object; each row carries its domain tag (a ``domain``
    state), so a rank that saw any batch has every state. ``compute()`` returns the
    score (``-W_T``, or ``λ1 W_D + λ2 W_T + λ3`` with ``weights``) as a 0-d tensor, so
    the object can be logged like any metric; with ``full_result=True`` it returns the
    :class:`~tguide.metrics.functional.otce.OTCEResult` (score, W_D, W_T, coupling) instead.
    ``max_stored`` bounds each domain separately (one reservoir per domain).

    Args:
        solver, reg, weights, max_iter, tol: as in :func:`~tguide.metrics.functional.otce.otce`.
        max_stored, seed, kwargs: see :class:`FeatureMetric`.

    Example:
        >>> import torch
        >>> m = OTCE()
        >>> m.update(torch.tensor([[0.0], [5.0]]), torch.tensor([0, 1]), domain="source")
        >>> m.update(torch.tensor([[0.1], [5.1]]), torch.tensor([4, 2]), domain="target")
        >>> float(m.compute()) == 0.0  # class 0 -> 4, class 1 -> 2: W_T = 0
        True
    """

    _fields: ClassVar[tuple[str, ...]] = ("features", "labels", "domain")

    @renamed_arguments(max_samples="max_stored")
    def __init__(
        self,
        solver: str = "emd",
        reg: float = 0.05,
        weights: tuple[float, float, float] | None = None,
        max_iter: int | None = None,
        tol: float = 1e-9,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_solver_options(solver, reg, max_iter, tol)
        _check_weights(weights)
        self.solver = solver
        self.reg = reg
        self.weights = weights
        self.otce_max_iter = max_iter
        self.tol = tol

    def update(self, features: Any, labels: Any, domain: str) -> None:  # type: ignore[override]
        """Add a batch of one domain: ``features (B, D)``, ``labels (B,)``, ``domain`` "source" or "target"."""
        if domain not in _DOMAINS:
            raise ValueError(f"`domain` must be 'source' or 'target', got {domain!r}.")
        x = check_features(features, "features").detach()
        y = _batch_labels(labels, x.shape[0], "labels", x.device)
        tag = torch.full((x.shape[0],), _DOMAINS[domain], dtype=torch.int64, device=x.device)
        self._store((_owned(x, features), y, tag), group=_DOMAINS[domain])

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        x, y, tag = self._samples()
        src, tgt = tag == 0, tag == 1
        for name, mask in (("source", src), ("target", tgt)):
            if not bool(mask.any()):
                raise ValueError(
                    f"OTCE.compute(): no {name} samples were given; call update(features, labels, domain={name!r})."
                )
        kwargs = {"solver": self.solver, "reg": self.reg, "weights": self.weights, "max_iter": self.otce_max_iter,
                  "tol": self.tol}
        return otce, (x[src], y[src], x[tgt], y[tgt]), kwargs

    def _result(self) -> OTCEResult:
        fn, args, kwargs = self._call()
        if self.null is not None:
            kwargs = {**kwargs, "correction": "null", "n_perm": self.null, "seed": self.null_seed}
        return fn(*args, **kwargs)

    def compute_result(self) -> OTCEResult:
        """The whole :class:`~tguide.metrics.functional.otce.OTCEResult` (score, W_D, W_T, coupling)
        of all ranks' samples; with ``null`` it is the ``correction="null"`` result (``.null``
        holds the calibration).

        Gathers across processes like ``compute()`` (call it on every rank under DDP); not cached.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return self._result()
