"""Statistics-backed torchmetrics classes: exact streaming through each score's statistics type.

=============================  =========================================  ==========================
class                          statistics (:mod:`tguide.metrics.statistics`)  memory (float64)
=============================  =========================================  ==========================
:class:`HScore`,               :class:`~tguide.metrics.statistics.GramStatistics`  D² + C·D (the rows
:class:`HScoreShrinkage`,                                                  while N ≤ D)
:class:`LogME`
:class:`TransRate`,            :class:`~tguide.metrics.statistics.ClassGramStatistics`  C·D² (the rows
:class:`TransRateComparable`                                               while N ≤ D)
:class:`GBC` (no PCA)          :class:`~tguide.metrics.statistics.ClassVarianceStatistics`  C·D
:class:`NCE`                   :class:`~tguide.metrics.statistics.LabelPairCounts`  Cs·C
=============================  =========================================  ==========================

``update`` folds each batch (cast to float64, as the functionals do) into the statistics;
``compute()`` calls the score's ``*_from_statistics``, the very function the functional calls,
so it equals the functional on all the data concatenated up to float64 roundoff. Under DDP
every statistic is a list state with ``dist_reduce_fx=None``: torchmetrics all-gathers each
process's tensors (O(C·D²) bytes per process), and ``compute()`` merges them by label value
(Chan et al.'s pairwise update), so the processes may see different label sets; a process
without data sends empty placeholders (no deadlock).

``null=P`` (label-shuffle calibration) keeps the samples, like the sample-path classes
(shuffling labels needs them), and honours ``max_stored``; without ``null``, ``max_stored`` is
ignored with a warning (memory no longer grows with N).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from tguide._warnings import stacklevel_outside
from tguide.metrics._validate import as_tensor, check_features
from tguide.metrics.functional.gbc import gbc, gbc_from_statistics
from tguide.metrics.functional.hscore import (
    hscore,
    hscore_from_statistics,
    hscore_shrinkage,
    hscore_shrinkage_from_statistics,
)
from tguide.metrics.functional.leep import nce, nce_from_statistics
from tguide.metrics.functional.logme import logme, logme_from_statistics
from tguide.metrics.functional.transrate import (
    transrate,
    transrate_comparable,
    transrate_comparable_from_statistics,
    transrate_from_statistics,
)
from tguide.metrics.stateful.base import FeaturesLabelsMetric, batch_labels, owned
from tguide.metrics.statistics import (
    ClassGramStatistics,
    ClassVarianceStatistics,
    GramStatistics,
    LabelPairCounts,
    Statistics,
)

__all__ = ["StreamingMetric", "HScore", "HScoreShrinkage", "TransRate", "TransRateComparable", "LogME", "GBC", "NCE"]


class StreamingMetric(FeaturesLabelsMetric):
    """Base of the statistics-backed classes (see the module doc): subclasses name their
    statistics type, their functional and the ``*_from_statistics`` of the score."""

    statistics_type: ClassVar[type[Statistics]] = Statistics
    _function: ClassVar[Callable[..., Any]]
    _from_statistics: ClassVar[Callable[..., Tensor]]

    @property
    def streaming(self) -> bool:
        """Whether this object keeps sufficient statistics (``False``: it keeps samples)."""
        return self.null is None and self._streamable()

    def _streamable(self) -> bool:
        return True

    def _kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the score (shared by the functional and ``*_from_statistics``)."""
        return {}

    def _register_states(self) -> None:
        if not self.streaming:
            super()._register_states()
            return
        if self.max_stored is not None:
            warnings.warn(
                f"{type(self).__name__}: `max_stored` has no effect: without `null` the class keeps exact "
                "sufficient statistics (memory O(C·D²) whatever N), not samples.",
                UserWarning,
                stacklevel=stacklevel_outside("tguide.metrics"),
            )
        self._ndim: dict[str, int] = {}
        # not ``_dtype``: torchmetrics' Metric keeps its own default dtype under that name
        self._state_dtypes: dict[str, torch.dtype] = {}
        for name, ndim, dtype in self.statistics_type().state_names():
            self.add_state(name, default=[], dist_reduce_fx=None)
            self._ndim[name], self._state_dtypes[name] = ndim, dtype

    # ------------------------------------------------------------------ statistics <-> states
    def _entries(self) -> list[Statistics]:
        """One statistics object per entry of the list states (one per process after a sync)."""
        lists = {name: getattr(self, name) for name in self._ndim}
        count = len(next(iter(lists.values())))
        return [self.statistics_type.from_tensors({k: v[i] for k, v in lists.items()}) for i in range(count)]

    def statistics(self) -> Statistics:
        """This process's statistics (all processes' merged inside ``compute()``)."""
        out = self.statistics_type()
        for entry in self._entries():
            out = out.merge(entry)
        return out

    def _set(self, stats: Statistics) -> None:
        for name, value in stats.to_tensors(self.device).items():
            lst = getattr(self, name)
            lst.clear()
            lst.append(value)

    def state_nbytes(self) -> int:
        """Bytes of this process's statistics (what it sends to each peer when ``compute()`` syncs)."""
        return sum(t.numel() * t.element_size() for name in self._ndim for t in getattr(self, name))

    # ------------------------------------------------------------------ update / compute
    def _batch(self, a: Any, b: Any) -> Statistics:
        x = check_features(a, "features").detach()
        return self.statistics_type.from_samples(owned(x, a), batch_labels(b, x.shape[0], "labels", x.device))

    def update(self, features: Any, labels: Any) -> None:
        """Add a batch: ``features (B, D)`` of one layer and their ``labels (B,)``."""
        if not self.streaming:
            super().update(features, labels)
            return
        entries = self._entries()
        stats = entries[0] if entries else self.statistics_type()
        stats._merge_(self._batch(features, labels))
        self._set(stats)

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        """Give every empty statistic an empty placeholder (so a process without data can gather)."""
        if self.streaming:
            for name, ndim in self._ndim.items():
                lst = getattr(self, name)
                if isinstance(lst, list) and not lst:
                    lst.append(torch.zeros((0,) * ndim, dtype=self._state_dtypes[name], device=self.device))
        kwargs = {} if dist_sync_fn is None else {"dist_sync_fn": dist_sync_fn}
        super()._sync_dist(process_group=process_group, **kwargs)

    def compute(self) -> Any:
        """The score of all data (all ranks), a 0-d float64 tensor (with ``null``: the dict of
        :meth:`~tguide.metrics.functional.permutation.NullCalibrated.as_dict`)."""
        if not self.streaming:
            return super().compute()
        stats = self.statistics()
        if stats.n == 0:
            raise ValueError(
                f"{type(self).__name__}.compute() was called before any update(); feed at least one batch "
                f"with update(...) first."
            )
        return type(self)._from_statistics(stats, **self._kwargs())

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return type(self)._function, self._samples(), self._kwargs()


class HScore(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore` (Bao et al., ICIP 2019).

    ``update(features, labels)``; ``compute()`` = :func:`~tguide.metrics.functional.hscore.hscore_from_statistics`
    of the merged :class:`~tguide.metrics.statistics.GramStatistics` (n, mean, centred D×D Gram,
    class means and counts).

    Example:
        >>> import torch
        >>> m = HScore()
        >>> f, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> m.update(f[:25], y[:25]); m.update(f[25:], y[25:])
        >>> bool(torch.isclose(m.compute(), hscore(f, y)))
        True
    """

    statistics_type = GramStatistics
    _function = staticmethod(hscore)
    _from_statistics = staticmethod(hscore_from_statistics)


class HScoreShrinkage(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.hscore.hscore_shrinkage` (Ibrahim et al., ECML PKDD 2022).

    :class:`~tguide.metrics.statistics.GramStatistics` (with ``Σ‖a‖²a`` and ``Σ‖a‖⁴``, shifted
    exactly to the final mean, for the Ledoit–Wolf intensity).

    Args:
        between_ddof: ``1`` (default) the published listing's class-mean covariance over N − 1,
            ``0`` the 1/N variant. Other arguments: :class:`~tguide.metrics.stateful.base.FeatureMetric`.
    """

    statistics_type = GramStatistics
    _function = staticmethod(hscore_shrinkage)
    _from_statistics = staticmethod(hscore_shrinkage_from_statistics)

    def __init__(self, between_ddof: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.between_ddof = between_ddof

    def _kwargs(self) -> dict[str, Any]:
        return {"between_ddof": self.between_ddof}


class TransRate(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate` (Huang et al., ICML 2022).

    :class:`~tguide.metrics.statistics.ClassGramStatistics` (per-class counts, means and centred
    D×D Grams: memory C·D²).

    Args:
        eps: distortion ε of the coding rate. Other arguments: :class:`~tguide.metrics.stateful.base.FeatureMetric`.
    """

    statistics_type = ClassGramStatistics
    _function = staticmethod(transrate)
    _from_statistics = staticmethod(transrate_from_statistics)

    def __init__(self, eps: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def _kwargs(self) -> dict[str, Any]:
        return {"eps": self.eps}


class TransRateComparable(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.transrate.transrate_comparable` (width- and scale-comparable).

    The statistics of :class:`TransRate`.

    Args:
        rank, eps: see the functional. Other arguments: :class:`~tguide.metrics.stateful.base.FeatureMetric`.
    """

    statistics_type = ClassGramStatistics
    _function = staticmethod(transrate_comparable)
    _from_statistics = staticmethod(transrate_comparable_from_statistics)

    def __init__(self, rank: int = 32, eps: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = rank
        self.eps = eps

    def _kwargs(self) -> dict[str, Any]:
        return {"rank": self.rank, "eps": self.eps}


class LogME(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.logme.logme` (You et al., ICML 2021).

    :class:`~tguide.metrics.statistics.GramStatistics`: for N > D ``FᵀF``, ``FᵀY``, ``‖y‖²`` and
    n follow from them; while a process has seen at most D rows it keeps the rows (the N ≤ D
    route needs their N×N Gram).

    Args:
        tol, max_iter: the evidence fixed point's limits.
        Other arguments: :class:`~tguide.metrics.stateful.base.FeatureMetric`.
    """

    statistics_type = GramStatistics
    _function = staticmethod(logme)
    _from_statistics = staticmethod(logme_from_statistics)

    def __init__(self, tol: float = 1e-7, max_iter: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tol = tol
        self.max_iter = max_iter

    def _kwargs(self) -> dict[str, Any]:
        return {"tol": self.tol, "max_iter": self.max_iter}


class GBC(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.gbc.gbc` (Pándy et al., CVPR 2022).

    Without PCA (``pca_dim=None``): :class:`~tguide.metrics.statistics.ClassVarianceStatistics`
    (per-class counts, means and per-dimension variances: memory C·D). With ``pca_dim`` the PCA
    needs every sample, so the samples are kept (sample path).

    Args:
        gaussian, pca_dim, min_variance, reference_code: see the functional. Other arguments:
            :class:`~tguide.metrics.stateful.base.FeatureMetric`.
    """

    statistics_type = ClassVarianceStatistics
    _function = staticmethod(gbc)
    _from_statistics = staticmethod(gbc_from_statistics)

    def __init__(
        self,
        gaussian: str = "spherical",
        pca_dim: int | None = None,
        min_variance: float = 1e-4,
        reference_code: bool = False,
        **kwargs: Any,
    ) -> None:
        self.pca_dim = pca_dim  # read by _register_states (called by the base __init__)
        super().__init__(**kwargs)
        self.gaussian = gaussian
        self.min_variance = min_variance
        self.reference_code = reference_code

    def _streamable(self) -> bool:
        return self.pca_dim is None

    def _kwargs(self) -> dict[str, Any]:
        kwargs = {"gaussian": self.gaussian, "min_variance": self.min_variance, "reference_code": self.reference_code}
        return kwargs if self.streaming else {**kwargs, "pca_dim": self.pca_dim}


class NCE(StreamingMetric):
    """Stateful :func:`~tguide.metrics.functional.leep.nce` (Tran et al., ICCV 2019).

    ``update(source_labels, labels)``. :class:`~tguide.metrics.statistics.LabelPairCounts`: the
    count table of (source label, label) pairs (memory Cs·C).
    """

    _fields: ClassVar[tuple[str, ...]] = ("source_labels", "labels")
    statistics_type = LabelPairCounts
    _function = staticmethod(nce)
    _from_statistics = staticmethod(nce_from_statistics)

    def _batch(self, a: Any, b: Any) -> Statistics:
        z = as_tensor(a, "source_labels")
        n = z.shape[0] if z.ndim >= 1 else 0
        z = batch_labels(a, n, "source_labels", z.device)
        return LabelPairCounts.from_samples(z, batch_labels(b, n, "labels", z.device))

    def update(self, source_labels: Any, labels: Any) -> None:
        """Add a batch: source-task labels ``(B,)`` (e.g. the source model's argmax) and target labels ``(B,)``."""
        if self.streaming:
            super().update(source_labels, labels)
            return
        z = as_tensor(source_labels, "source_labels")
        n = z.shape[0] if z.ndim >= 1 else 0
        self._store(
            (batch_labels(source_labels, n, "source_labels", z.device), batch_labels(labels, n, "labels", z.device))
        )
