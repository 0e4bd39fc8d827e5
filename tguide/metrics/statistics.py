"""Sufficient statistics of the scores that need no more than them, one type per score family.

=========================  ==========================================  ===========================
type                       keeps (float64; per group of rows)          scores
=========================  ==========================================  ===========================
:class:`GramStatistics`    all rows: n, mean, centred Gram ``Σ aaᵀ``,  H-score, shrinkage H-score,
                           ``Σ‖a‖²a``, ``Σ‖a‖⁴``; per class n_c, mean_c  LogME
:class:`ClassGramStatistics`  per class n_c, mean_c, centred Gram      TransRate (both forms)
:class:`ClassVarianceStatistics`  per class n_c, mean_c, ``Σ a∘a``     GBC
:class:`LabelPairCounts`   counts of (source label, label) pairs       NCE
:class:`LEEPJointTable`    per class n_c and the mean of θ             LEEP's joint table
=========================  ==========================================  ===========================

Every type has ``S.from_samples(x, labels)``, ``s.update(x, labels)`` (in place) and
``s.merge(other) -> S`` (a new object): groups are keyed by the raw label values, so batches
or processes with different label sets merge exactly, in any order (Chan, Golub and LeVeque's
pairwise update of centred statistics, :mod:`tguide.metrics.moments`). Each score is computed
from its statistics by ONE function in its functional module (``hscore_from_statistics``,
``logme_from_statistics``, ...); the functional is that function of ``from_samples``.

While a :class:`GramStatistics` or :class:`ClassGramStatistics` has seen at most D rows it
keeps the rows themselves instead (at most D×D numbers, the size of one Gram): the scores then
take their N×N route, which is both cheaper and what the published N ≤ D formulas need.

:meth:`Statistics.relabel` gives the statistics of the same features under other labels,
sharing everything that depends on the features only (:attr:`Statistics.feature_cache`: e.g.
one eigendecomposition): the label-shuffle null of :mod:`tguide.metrics.null` is the score
function on relabelled statistics.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from tguide.metrics import moments
from tguide.metrics._validate import as_tensor, check_features, check_labels, check_probs, check_same_length
from tguide.metrics.moments import Record

__all__ = [
    "Statistics",
    "GramStatistics",
    "ClassGramStatistics",
    "ClassVarianceStatistics",
    "LabelPairCounts",
    "LEEPJointTable",
    "raw_labels",
]

S = TypeVar("S", bound="Statistics")
_EMPTY = {"key": 2, "n": 1, **{f: moments.FIELD_NDIM[f] for f in moments.FIELD_NDIM}}


def raw_labels(labels: Any, n: int | None, name: str = "labels", device: torch.device | None = None) -> Tensor:
    """Validated raw (not remapped) int64 labels ``(n,)`` (any label set, at least one class)."""
    codes, _ = check_labels(labels, n, name, min_classes=1)
    y = as_tensor(labels, name).detach().reshape(codes.shape[0])
    return y.to(device=device if device is not None else y.device, dtype=torch.int64)


class Statistics:
    """Base of the statistics types: one :mod:`~tguide.metrics.moments` record per *part*.

    Parts: ``"g"`` all rows as one group, ``"c"`` one group per label, ``"t"`` one group per
    (source label, label) pair. Attributes: ``records`` (part → record, or ``None`` while
    empty or while the rows are kept), ``rows`` (``(x (n, D) float64, labels (n,) int64)``
    or ``None``), ``feature_cache`` (values that depend on the features only).
    """

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {}
    _rows_up_to_d: ClassVar[bool] = False

    def __init__(
        self,
        records: dict[str, Record] | None = None,
        rows: tuple[Tensor, Tensor] | None = None,
        feature_cache: dict[str, Any] | None = None,
    ) -> None:
        self.records = records
        self.rows = rows
        self.feature_cache: dict[str, Any] = {} if feature_cache is None else feature_cache

    # ------------------------------------------------------------------ building
    @classmethod
    def _check(cls, x: Any, labels: Any) -> tuple[Tensor, Tensor]:
        f = check_features(x, "features").detach()
        return f, raw_labels(labels, f.shape[0], "labels", f.device)

    @classmethod
    def from_samples(cls: type[S], features: Any, labels: Any) -> S:
        """The statistics of ``features (N, D)`` with ``labels (N,)`` (validated)."""
        x, y = cls._check(features, labels)
        return cls._from_checked(x, y)

    @classmethod
    def _from_checked(cls: type[S], x: Tensor, y: Tensor, reuse: dict[str, Record] | None = None) -> S:
        if cls._rows_up_to_d and x.shape[0] <= x.shape[1]:
            return cls(rows=(x, y))
        return cls(records=cls._records(x, y, reuse or {}))

    @classmethod
    def _records(cls, x: Tensor | None, y: Tensor, reuse: dict[str, Record]) -> dict[str, Record]:
        out = {}
        for part, fields in cls._parts.items():
            if part in reuse:
                out[part] = reuse[part]
                continue
            keys = torch.zeros_like(y)[:, None] if part == "g" else (y if y.ndim == 2 else y[:, None])
            out[part] = moments.batch_record(x, keys, fields)
        return out

    def relabel(self: S, features: Any, labels: Any) -> S:
        """The statistics of the same ``features`` (those that built ``self``) under ``labels``.

        Shares :attr:`feature_cache` and every label-independent part with ``self``."""
        x, y = type(self)._check(features, labels)
        if self.rows is not None:
            return type(self)(rows=(self.rows[0], y), feature_cache=self.feature_cache)
        reuse = {"g": self.records["g"]} if self.records and "g" in self.records else {}
        out = type(self)._from_checked(x, y, reuse)
        out.feature_cache = self.feature_cache
        return out

    # ------------------------------------------------------------------ merging
    @property
    def n(self) -> int:
        """Rows seen."""
        if self.rows is not None:
            return int(self.rows[0].shape[0])
        if not self.records:
            return 0
        return int(next(iter(self.records.values()))["n"].sum())

    @property
    def width(self) -> int | None:
        """D of the rows seen (``None`` when empty or without features)."""
        if self.rows is not None:
            return int(self.rows[0].shape[1])
        if self.records:
            for rec in self.records.values():
                if "mean" in rec:
                    return int(rec["mean"].shape[1])
        return None

    def _materialised(self) -> dict[str, Record]:
        if self.rows is not None:
            return type(self)._records(self.rows[0], self.rows[1], {})
        assert self.records is not None
        return self.records

    def update(self, features: Any, labels: Any) -> None:
        """Fold a batch in (in place)."""
        self._merge_(type(self).from_samples(features, labels))

    def merge(self: S, other: S) -> S:
        """The statistics of both (a new object; neither input changes)."""
        out = self.copy()
        out._merge_(other)
        return out

    def copy(self: S) -> S:
        """A copy sharing no tensor with ``self`` (the feature cache is dropped)."""
        rows = None if self.rows is None else (self.rows[0].clone(), self.rows[1].clone())
        records = None if self.records is None else {p: moments.clone(r) for p, r in self.records.items()}
        return type(self)(records=records, rows=rows)

    def _merge_(self, other: Statistics) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}.")
        if other.n == 0:
            return
        if self.n == 0:
            self.records, self.rows = other.copy().records, other.copy().rows
            self.feature_cache = {}
            return
        if self.width is not None and other.width is not None and self.width != other.width:
            raise ValueError(
                f"`features` of this batch have {other.width} columns but earlier batches had "
                f"{self.width}; feed one layer's features per statistics object."
            )
        if self.rows is not None and other.rows is not None and self.n + other.n <= self.rows[0].shape[1]:
            self.rows = (torch.cat([self.rows[0], other.rows[0]]), torch.cat([self.rows[1], other.rows[1]]))
        else:
            mine = self._materialised() if self.rows is not None else self.records
            theirs = other._materialised() if other.rows is not None else other.records
            assert mine is not None and theirs is not None
            self.records = {p: moments.merge(mine[p], theirs[p]) for p in type(self)._parts}
            self.rows = None
        self.feature_cache = {}

    def part(self, name: str) -> Record:
        """The record of part ``name`` sorted by key (``ValueError`` when empty)."""
        if self.n == 0:
            raise ValueError(f"{type(self).__name__} is empty; update it with at least one batch first.")
        rec = self._materialised()[name]
        order = torch.argsort(rec["key"][:, -1], stable=True)
        if rec["key"].shape[1] > 1:
            order = order[torch.argsort(rec["key"][order, 0], stable=True)]
        return {f: v[order] for f, v in rec.items()}

    def labels_codes(self) -> tuple[Tensor, Tensor, int]:
        """For kept rows: ``(codes (n,) in 0..C-1, counts (C,) float64, C)`` (labels sorted)."""
        assert self.rows is not None
        _, codes = torch.unique(self.rows[1], sorted=True, return_inverse=True)
        counts = torch.bincount(codes).to(torch.float64)
        return codes, counts, int(counts.numel())

    def num_classes(self) -> int:
        """Distinct labels seen."""
        if self.rows is not None:
            return int(torch.unique(self.rows[1]).numel())
        return int(torch.unique(self.part(self._label_part)["key"][:, -1]).numel())

    _label_part: ClassVar[str] = "c"

    # ------------------------------------------------------------------ tensors (DDP states)
    def state_names(self) -> list[tuple[str, int, torch.dtype]]:
        """``(name, ndim, dtype)`` of every tensor of :meth:`to_tensors`."""
        out = []
        for part, fields in type(self)._parts.items():
            for f in ("key", "n", *fields):
                out.append((f"{part}_{f}", _EMPTY[f], torch.int64 if f == "key" else torch.float64))
        if type(self)._rows_up_to_d:
            out += [("rows_features", 2, torch.float64), ("rows_labels", 1, torch.int64)]
        return out

    def to_tensors(self, device: torch.device | None = None) -> dict[str, Tensor]:
        """Every statistic as a tensor (empty placeholders for what is not kept)."""
        out = {name: torch.zeros((0,) * ndim, dtype=dtype, device=device) for name, ndim, dtype in self.state_names()}
        if self.rows is not None:
            out["rows_features"], out["rows_labels"] = self.rows
        elif self.records is not None:
            for part, rec in self.records.items():
                for f, v in rec.items():
                    out[f"{part}_{f}"] = v
        return out

    @classmethod
    def from_tensors(cls: type[S], tensors: dict[str, Tensor]) -> S:
        """The inverse of :meth:`to_tensors`."""
        rows = tensors.get("rows_features")
        if rows is not None and rows.shape[0]:
            return cls(rows=(rows, tensors["rows_labels"]))
        first = next(iter(cls._parts))
        if tensors[f"{first}_key"].shape[0] == 0:
            return cls()
        records = {
            part: {f: tensors[f"{part}_{f}"] for f in ("key", "n", *fields)} for part, fields in cls._parts.items()
        }
        return cls(records=records)

    def nbytes(self) -> int:
        """Bytes held (what a process sends when the statistics are gathered)."""
        return int(sum(t.numel() * t.element_size() for t in self.to_tensors().values()))


class GramStatistics(Statistics):
    """All rows: n, mean, centred Gram, ``Σ‖a‖²a``, ``Σ‖a‖⁴``; per class n_c and mean_c.

    The statistics of :func:`~tguide.metrics.functional.hscore.hscore`,
    :func:`~tguide.metrics.functional.hscore.hscore_shrinkage` (the Ledoit–Wolf intensity
    needs ``Σ‖a‖⁴`` about the final mean) and :func:`~tguide.metrics.functional.logme.logme`
    (``FᵀF = Σaaᵀ + n·mean meanᵀ``, ``FᵀY = (n_c mean_c)ᵀ``). Memory D² + C·D; the rows
    instead while at most D of them were seen.
    """

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {"g": ("mean", "m2", "t3", "q4"), "c": ("mean",)}
    _rows_up_to_d: ClassVar[bool] = True


class ClassGramStatistics(Statistics):
    """Per class n_c, mean_c and the centred Gram (memory C·D²; the rows while at most D).

    The statistics of :func:`~tguide.metrics.functional.transrate.transrate` and
    :func:`~tguide.metrics.functional.transrate.transrate_comparable`: the class Grams about
    the global mean ``G_c = Σ_{i∈c} a_iaᵢᵀ + n_c e_c e_cᵀ`` (``e_c = mean_c − mean``) follow.
    """

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean", "m2")}
    _rows_up_to_d: ClassVar[bool] = True


class ClassVarianceStatistics(Statistics):
    """Per class n_c, mean_c and the per-dimension ``Σ a∘a`` (memory C·D): GBC's statistics."""

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean", "m2d")}


class LabelPairCounts(Statistics):
    """Counts of (source label, label) pairs (memory Cs·C): NCE's joint table.

    ``from_samples(source_labels, labels)``: both ``(N,)`` integer labels.
    """

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {"t": ()}
    _label_part: ClassVar[str] = "t"

    @classmethod
    def _check(cls, x: Any, labels: Any) -> tuple[Tensor, Tensor]:
        z_t = as_tensor(x, "source_labels")
        z = raw_labels(x, z_t.shape[0] if z_t.ndim >= 1 else 0, "source_labels")
        y = raw_labels(labels, None, "labels", z.device)
        check_same_length(z, y, "source_labels", "labels")
        return z, y

    @classmethod
    def _from_checked(cls, x: Tensor, y: Tensor, reuse: dict[str, Record] | None = None) -> LabelPairCounts:
        return cls(records=cls._records(None, torch.stack([x, y], dim=1), {}))

    def relabel(self, features: Any, labels: Any) -> LabelPairCounts:
        return type(self).from_samples(features, labels)


class LEEPJointTable(Statistics):
    """Per class n_c and the mean of the source probabilities θ (memory C·Cs).

    ``from_samples(source_probs, labels)``. LEEP's joint table is
    ``P̂(y, z) = n_y · mean_y(θ_z) / N``; the score itself also needs every sample's
    ``θ_i`` (:func:`~tguide.metrics.functional.leep.leep`).
    """

    _parts: ClassVar[dict[str, tuple[str, ...]]] = {"c": ("mean",)}

    @classmethod
    def _check(cls, x: Any, labels: Any) -> tuple[Tensor, Tensor]:
        p = check_probs(x, "source_probs").detach()
        return p, raw_labels(labels, p.shape[0], "labels", p.device)

    def joint(self) -> Tensor:
        """``P̂(y, z)`` ``(C, Cs)``, classes in sorted label order."""
        rec = self.part("c")
        return rec["n"][:, None] * rec["mean"] / rec["n"].sum()
