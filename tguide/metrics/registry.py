"""The one metric registry: what each transferability score needs and how to call it.

:data:`METRICS` maps a name to a :class:`MetricInfo`. The training-time monitor
(:mod:`tguide.probe`, :class:`tguide.callbacks.TransferabilityMonitor`) and model selection
(:func:`tguide.select.rank`) both read it, so a metric added with :func:`register_metric`
is available to both. Functions are named as ``"module:attr"`` strings and imported on first
use (this module imports nothing heavy, and no Lightning).

Calling conventions (:meth:`MetricInfo.arguments` builds the positional arguments, the
target labels always last so that :func:`tguide.metrics.label_shuffle_null` can shuffle them):

=========================  ============================================================
needs                      call
=========================  ============================================================
nothing (features only)    ``fn(features, labels)``
``needs_source_probs``     ``fn(source_probs, labels)`` (LEEP) or, with
                           ``source_input="labels"``, ``fn(argmax source_probs, labels)``
                           (NCE)
``needs_source_samples``   ``fn(source_features, source_labels, features, labels)`` (OTCE)
=========================  ============================================================

>>> get_metric("leep").needs_source_probs
True
>>> sorted(n for n in METRICS if METRICS[n].needs_source_samples)
['otce_sim']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "MetricInfo", "get_metric", "metric_names", "register_metric"]


@dataclass(frozen=True)
class MetricInfo:
    """A registry entry.

    Attributes:
        name: registry name (``transfer/<name>/<layer>`` in the monitor's logs).
        function: ``"module:attr"`` of the functional (imported by :meth:`load`), or a callable.
        needs_source_probs: the score reads the source model's class probabilities on the target
            samples (the softmax of its head), so it applies only to candidates with a head.
        needs_source_samples: the score compares source and target features (OTCE).
        higher_is_better: the ranking direction (every transferability score: ``True``).
        streaming_class: ``"module:attr"`` of the torchmetrics-style class, if any. Subclasses of
            :class:`tguide.metrics.stateful.StreamingMetric` (H-score, TransRate, LogME, GBC, NCE)
            keep exact sufficient statistics (memory O(C·D²) whatever N); the others (LEEP,
            OTCE) keep the samples.
        statistics: ``"module:attr"`` of the score's statistics type
            (:mod:`tguide.metrics.statistics`: ``from_samples``/``update``/``merge``), when the
            score is computed from sufficient statistics alone; ``None`` for the scores that
            need the samples. :meth:`from_statistics` scores merged statistics (e.g. merged
            across processes instead of gathering the features).
        source_input: with ``needs_source_probs``: ``"probs"`` (the probabilities) or
            ``"labels"`` (their argmax, the source's hard labels: NCE).
        pool_normalised: the published score is min-max normalised across the candidate pool
            (NCTI, ETran); the ranking layer does that, the functional returns the raw score.
        pool_terms, pool_combine: ``"module:attr"`` of ``terms(features, labels)`` (one
            model's raw terms) and ``combine([terms, ...]) -> (M,)`` (the pool's scores).
        baseline: not a transferability score but a cheap proxy a user could use instead
            (kNN accuracy, linear-probe accuracy); reported beside the scores.
        default_kwargs: keyword arguments passed unless the caller overrides them.
        degeneracy: ``"module:attr"`` of ``check(features, labels, **kwargs) -> str`` (``""`` when the
            score means what it says, else a one-line reason, a
            :class:`tguide.metrics.degeneracy.Finding` with its flag) run on the actual features
            with the metric's keyword arguments; ``None`` for a score without such a condition.
        width_dependent: the score grows with the feature width D by construction (raw TransRate),
            so rows of different widths are not comparable.
    """

    name: str
    function: str | Callable[..., Any]
    needs_source_probs: bool = False
    needs_source_samples: bool = False
    higher_is_better: bool = True
    streaming_class: str | None = None
    source_input: str = "probs"
    pool_normalised: bool = False
    baseline: bool = False
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pool_terms: str | None = None
    pool_combine: str | None = None
    statistics: str | None = None
    degeneracy: str | None = None
    width_dependent: bool = False

    def __post_init__(self) -> None:
        if self.source_input not in ("probs", "labels"):
            raise ValueError(
                f"MetricInfo {self.name!r}: `source_input` must be 'probs' or 'labels', got {self.source_input!r}."
            )
        if isinstance(self.function, str) and ":" not in self.function:
            raise ValueError(
                f"MetricInfo {self.name!r}: `function` must be 'module:attr' or a callable, got {self.function!r}."
            )

    # -- compatibility with tguide.probe.MetricSpec ------------------------------------
    @property
    def target(self) -> str:
        """``"module:attr"`` of the function (``MetricSpec.target``)."""
        return (
            self.function
            if isinstance(self.function, str)
            else f"{self.function.__module__}:{self.function.__qualname__}"
        )

    @property
    def needs_source(self) -> bool:
        """Alias of :attr:`needs_source_samples` (``MetricSpec.needs_source``)."""
        return self.needs_source_samples

    @property
    def needs_head(self) -> bool:
        """Whether the score needs the candidate's source-class head."""
        return self.needs_source_probs

    def load(self) -> Callable[..., Any]:
        """The metric function (imported now if named by a string)."""
        if callable(self.function):
            return self.function
        module, attr = self.function.split(":")
        return getattr(importlib.import_module(module), attr)

    def load_pool(self) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
        """``(terms, combine)`` of a pool-normalised metric, or ``None``."""
        if not (self.pool_terms and self.pool_combine):
            return None
        return tuple(_import(t) for t in (self.pool_terms, self.pool_combine))  # type: ignore[return-value]

    def load_statistics(self) -> type | None:
        """The statistics type (:attr:`statistics`), or ``None`` for a sample-path score."""
        return None if self.statistics is None else _import(self.statistics)  # type: ignore[return-value]

    def check_degeneracy(self, features: Any, labels: Any, **kwargs: Any) -> str:
        """The reason this score saturates or degenerates on ``features`` (``""`` when fine or unchecked)."""
        if self.degeneracy is None:
            return ""
        reason: str = _import(self.degeneracy)(features, labels, **{**self.default_kwargs, **kwargs})
        return reason

    def from_statistics(self, stats: Any, **kwargs: Any) -> Any:
        """The score of merged statistics: ``<function>_from_statistics(stats, **default_kwargs, **kwargs)``.

        ``ValueError`` for a score without statistics (it needs the samples)."""
        if self.statistics is None or not isinstance(self.function, str):
            raise ValueError(f"{self.name} is not computed from sufficient statistics; it needs the samples.")
        return _import(self.function + "_from_statistics")(stats, **{**self.default_kwargs, **kwargs})

    def arguments(
        self,
        features: Any = None,
        labels: Any = None,
        *,
        source_probs: Any = None,
        source_features: Any = None,
        source_labels: Any = None,
    ) -> tuple[Any, ...]:
        """The positional arguments of the function for these inputs (target labels last).

        Raises ``ValueError`` naming what is missing (e.g. ``source_probs`` for LEEP on a
        model without a head).
        """
        if labels is None:
            raise ValueError(f"{self.name}: `labels` (the target labels) are required.")
        if self.needs_source_probs:
            if source_probs is None:
                raise ValueError(
                    f"{self.name} needs `source_probs`: the source model's class probabilities "
                    "on the target samples (a candidate with a classifier head)."
                )
            if self.source_input == "labels":
                import torch

                return (torch.as_tensor(source_probs).argmax(dim=1), labels)
            return (source_probs, labels)
        if self.needs_source_samples:
            if source_features is None or source_labels is None:
                raise ValueError(
                    f"{self.name} compares source and target features: pass `source_features` "
                    "and `source_labels` (source samples through the same layer)."
                )
            if features is None:
                raise ValueError(f"{self.name}: `features` (target features) are required.")
            return (source_features, source_labels, features, labels)
        if features is None:
            raise ValueError(f"{self.name}: `features` are required.")
        return (features, labels)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function with :attr:`default_kwargs` under ``kwargs``."""
        return self.load()(*args, **{**self.default_kwargs, **kwargs})


METRICS: dict[str, MetricInfo] = {}


def _import(target: str) -> Callable[..., Any]:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def register_metric(
    name: str,
    function: str | Callable[..., Any],
    *,
    needs_source_probs: bool = False,
    needs_source_samples: bool = False,
    higher_is_better: bool = True,
    streaming_class: str | None = None,
    source_input: str = "probs",
    pool_normalised: bool = False,
    baseline: bool = False,
    default_kwargs: Mapping[str, Any] | None = None,
    pool_terms: str | None = None,
    pool_combine: str | None = None,
    statistics: str | None = None,
    degeneracy: str | None = None,
    width_dependent: bool = False,
    replace: bool = False,
) -> MetricInfo:
    """Add a metric to :data:`METRICS` (for the monitor and for ranking alike); returns its entry.

    ``ValueError`` if ``name`` is taken (pass ``replace=True`` to override an entry).
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"metric name must be a non-empty string without '/', got {name!r}.")
    if name in METRICS and not replace:
        raise ValueError(f"metric {name!r} is already registered; pass replace=True to override it.")
    info = MetricInfo(
        name,
        function,
        needs_source_probs=needs_source_probs,
        needs_source_samples=needs_source_samples,
        higher_is_better=higher_is_better,
        streaming_class=streaming_class,
        source_input=source_input,
        pool_normalised=pool_normalised,
        baseline=baseline,
        default_kwargs=dict(default_kwargs or {}),
        pool_terms=pool_terms,
        pool_combine=pool_combine,
        statistics=statistics,
        degeneracy=degeneracy,
        width_dependent=width_dependent,
    )
    METRICS[name] = info
    return info


def get_metric(name: str) -> MetricInfo:
    """The entry of ``name``; ``KeyError`` listing the valid names otherwise."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown metric {name!r}; valid names: {', '.join(METRICS)}") from None


def metric_names(*, baselines: bool = True) -> tuple[str, ...]:
    """Registered names (scores first, in registration order; baselines last unless excluded)."""
    scores = [n for n, m in METRICS.items() if not m.baseline]
    return tuple(scores + ([n for n, m in METRICS.items() if m.baseline] if baselines else []))


_F = "tguide.metrics.functional"
_S = "tguide.metrics.stateful"
_ST = "tguide.metrics.statistics"
_D = "tguide.metrics.degeneracy"
# Degeneracy (tguide.metrics.degeneracy): H-score, SFDA, ETran, NCTI and GBC have a check; raw TransRate
# is width-dependent. No condition: OTCE, the Ledoit-Wolf H-score (full-rank covariance), the comparable
# TransRate (fixed rank r ≤ N−1), LogME (an evidence, defined for any N, D), LEEP/NCE (source
# probabilities), NLEEP, and the baselines (held-out accuracies).
# Exact OT is quadratic in the samples (5k × 5k: ~10 s on a CPU core): by default OTCE scores a
# seeded stratified subsample of 1000 per side (otce_sim's own `max_samples`).
register_metric(
    "otce_sim",
    f"{_F}.otce:otce_sim",
    needs_source_samples=True,
    streaming_class=f"{_S}:OTCE",
    default_kwargs={"max_samples": 1000},
)
register_metric(
    "hscore",
    f"{_F}.hscore:hscore",
    streaming_class=f"{_S}:HScore",
    statistics=f"{_ST}:GramStatistics",
    degeneracy=f"{_D}:hscore",
)
register_metric(
    "hscore_shrinkage",
    f"{_F}.hscore:hscore_shrinkage",
    streaming_class=f"{_S}:HScoreShrinkage",
    statistics=f"{_ST}:GramStatistics",
)
register_metric(
    "transrate",
    f"{_F}.transrate:transrate",
    streaming_class=f"{_S}:TransRate",
    statistics=f"{_ST}:ClassGramStatistics",
    width_dependent=True,
)
register_metric(
    "transrate_comparable",
    f"{_F}.transrate:transrate_comparable",
    streaming_class=f"{_S}:TransRateComparable",
    statistics=f"{_ST}:ClassGramStatistics",
)
register_metric("logme", f"{_F}.logme:logme", streaming_class=f"{_S}:LogME", statistics=f"{_ST}:GramStatistics")
# LEEP's joint table is a statistic (LEEPJointTable) but its score needs every sample: no `statistics`
register_metric("leep", f"{_F}.leep:leep", needs_source_probs=True, streaming_class=f"{_S}:LEEP")
register_metric(
    "nce",
    f"{_F}.leep:nce",
    needs_source_probs=True,
    source_input="labels",
    streaming_class=f"{_S}:NCE",
    statistics=f"{_ST}:LabelPairCounts",
)

# Metrics whose functional modules land separately: registered once their files exist.
_OPTIONAL: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    # name, module file, attr, options
    ("sfda", "sfda", "sfda", {"degeneracy": f"{_D}:sfda"}),
    (
        "ncti",
        "ncti",
        "ncti",
        {
            "pool_normalised": True,
            "pool_terms": f"{_F}.ncti:ncti_terms",
            "pool_combine": f"{_F}.ncti:ncti_pool",
            "degeneracy": f"{_D}:ncti",
        },
    ),
    (
        "etran",
        "etran",
        "etran",
        {
            "pool_normalised": True,
            "pool_terms": f"{_F}.etran:etran_terms",
            "pool_combine": f"{_F}.etran:etran_pool",
            "degeneracy": f"{_D}:etran",
        },
    ),
    (
        "gbc",
        "gbc",
        "gbc",
        {"streaming_class": f"{_S}:GBC", "statistics": f"{_ST}:ClassVarianceStatistics", "degeneracy": f"{_D}:gbc"},
    ),
    ("nleep", "nleep", "nleep", {}),
    ("knn", "knn", "knn_accuracy", {"baseline": True}),
    ("linear_probe", "linear_probe", "linear_probe_accuracy", {"baseline": True}),
)
_FUNCTIONAL_DIR = Path(__file__).resolve().parent / "functional"
for _name, _file, _attr, _opts in _OPTIONAL:
    if (_FUNCTIONAL_DIR / f"{_file}.py").is_file():
        register_metric(_name, f"{_F}.{_file}:{_attr}", **_opts)
