"""Stateful (torchmetrics) versions of the transferability metrics.

Every class keeps the samples it is given in ``cat`` list states, so ``compute()``
under DDP sees every rank's samples (torchmetrics gathers them, unequal shard sizes
included), and then calls the functional on all of them: no formula lives here.

Memory can be bounded with ``max_stored``: each process then keeps a uniform random
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
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from tguide._deprecation import renamed_arguments
from tguide.metrics._validate import as_tensor, check_features, check_labels, check_probs
from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
from tguide.metrics.functional.leep import leep, nce
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.otce import OTCEResult, _check_solver_options, _check_weights, otce
from tguide.metrics.functional.transrate import transrate, transrate_comparable
from tguide.metrics.null import label_shuffle_null

__all__ = ["FeatureMetric", "HScore", "HScoreShrinkage", "TransRate", "TransRateComparable", "LogME", "LEEP", "NCE",
           "OTCE"]


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
        for name in self._fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._gen = torch.Generator().manual_seed(self.seed)
        self._seen: dict[int, int] = {}  # group -> samples seen by this process
        self._slot: dict[int, int] = {}  # group -> index of its reservoir in the list states

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


class HScore(_FeaturesLabels):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore` (Bao et al., ICIP 2019).

    ``update(features, labels)``; ``compute()`` = the functional on every sample.

    Example:
        >>> import torch
        >>> m = HScore()
        >>> f, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> m.update(f[:25], y[:25]); m.update(f[25:], y[25:])
        >>> bool(torch.isclose(m.compute(), hscore(f, y)))
        True
    """

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return hscore, self._samples(), {}


class HScoreShrinkage(_FeaturesLabels):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore_shrinkage` (Ibrahim et al., WACV 2023)."""

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return hscore_shrinkage, self._samples(), {}


class TransRate(_FeaturesLabels):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate` (Huang et al., ICML 2022).

    Args:
        eps: distortion ε of the coding rate. Other arguments: :class:`FeatureMetric`.
    """

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, eps: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return transrate, self._samples(), {"eps": self.eps}


class TransRateComparable(_FeaturesLabels):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate_comparable` (width- and scale-comparable).

    Args:
        rank, eps: see the functional. Other arguments: :class:`FeatureMetric`.
    """

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, rank: int = 32, eps: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = rank
        self.eps = eps

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return transrate_comparable, self._samples(), {"rank": self.rank, "eps": self.eps}


class LogME(_FeaturesLabels):
    """Stateful :func:`~tguide.metrics.functional.logme.logme` (You et al., ICML 2021).

    Args:
        tol, max_iter: the evidence fixed point's limits. Other arguments: :class:`FeatureMetric`.
    """

    @renamed_arguments(max_samples="max_stored")
    def __init__(self, tol: float = 1e-7, max_iter: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tol = tol
        self.max_iter = max_iter

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return logme, self._samples(), {"tol": self.tol, "max_iter": self.max_iter}


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


class NCE(FeatureMetric):
    """Stateful :func:`~tguide.metrics.functional.leep.nce` (Tran et al., ICCV 2019).

    ``update(source_labels, labels)``.
    """

    _fields: ClassVar[tuple[str, ...]] = ("source_labels", "labels")

    def update(self, source_labels: Any, labels: Any) -> None:  # type: ignore[override]
        """Add a batch: source-task labels ``(B,)`` (e.g. the source model's argmax) and target labels ``(B,)``."""
        z = as_tensor(source_labels, "source_labels")
        n = z.shape[0] if z.ndim >= 1 else 0
        z = _batch_labels(source_labels, n, "source_labels", z.device)
        y = _batch_labels(labels, n, "labels", z.device)
        self._store((z, y))

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return nce, self._samples(), {}


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
