r"""Label-shuffle nulls: is a transferability score better than chance on *these* samples?

:func:`label_shuffle_null` scores a metric on the real target labels and on ``n_perm``
shuffles of them, and returns a :class:`~tguide.metrics.functional.permutation.NullCalibrated`:
the null's mean and spread, ``z = (score − μ₀)/σ₀`` (puts scores of different metrics, widths
and class counts on one scale), the one-sided permutation p-value and the bias-corrected
``score − μ₀`` (the same arithmetic as ``correction="null"`` of
:func:`~tguide.metrics.functional.otce.otce` and :func:`~tguide.metrics.functional.leep.nce`;
see :mod:`tguide.metrics.functional.permutation` for the formulas).

Cheap by construction: every metric here has a part that depends on the features only,
computed once, and a part that depends on the labels, recomputed per permutation. For the
scores computed from sufficient statistics (H-score, shrinkage H-score, LogME, TransRate and
its comparable form, GBC, NCE, LEEP's joint table) the null is the score's own
``*_from_statistics`` function on :meth:`~tguide.metrics.statistics.Statistics.relabel`-ed
statistics: the label-independent part (the global Gram and its eigendecomposition, the
principal axes of the comparable TransRate, the PCA of GBC) is shared, only the per-class
statistics are recomputed.

- OTCE / OTCE_sim: the coupling (one OT solve); each permutation re-tabulates P̂(y_s, y_t)
  (:func:`~tguide.metrics.functional.task_distance.task_distance_null`).

Any other callable works too (the target labels must be its last positional argument); it is
then simply called ``P + 1`` times.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels, check_probs, check_same_length
from tguide.metrics.functional import gbc as _gbc
from tguide.metrics.functional import hscore as _hs
from tguide.metrics.functional import leep as _leep
from tguide.metrics.functional import logme as _logme
from tguide.metrics.functional import otce as _otce
from tguide.metrics.functional import transrate as _tr
from tguide.metrics.functional.ncti import pca_scores
from tguide.metrics.functional.permutation import NullCalibrated, calibrate, label_permutations
from tguide.metrics.statistics import (
    ClassGramStatistics,
    ClassVarianceStatistics,
    GramStatistics,
    LabelPairCounts,
    LEEPJointTable,
    Statistics,
)

__all__ = ["NullCalibrated", "label_shuffle_null"]

_S = TypeVar("_S", bound=Statistics)


# ----------------------------------------------------------------------------- fast paths


def _relabelled_scores(
    stats: _S, x: Tensor, codes: Tensor, perms: Tensor, score: Callable[[_S], Tensor]
) -> tuple[Tensor, Tensor]:
    """``score`` of the statistics and of their relabelling by every permutation: ``(score, (P,))``."""
    observed = score(stats)
    null = torch.stack([score(stats.relabel(x, codes[p])) for p in perms.to(codes.device)])
    return observed, null


def _features_null(
    kind: type[Statistics],
    score: Callable[..., Tensor],
    features: Any,
    labels: Any,
    perms_fn: Callable[[int], Tensor],
    project: Callable[[Tensor], Tensor] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """The null of a score of ``(features, labels)`` computed from statistics of type ``kind``.

    ``project``: a label-independent map of the features done once (the comparable TransRate's
    principal axes, GBC's PCA)."""
    x = check_features(features, "features")
    codes, _ = check_labels(labels, x.shape[0], "labels", min_classes=2)
    codes = codes.to(x.device)
    if project is not None:
        x = project(x)
    stats = kind.from_samples(x, codes)
    return _relabelled_scores(stats, x, codes, perms_fn(x.shape[0]), lambda s: score(s, **kwargs))


def _transrate_comparable_null(
    features: Any, labels: Any, perms_fn: Callable[[int], Tensor], rank: int = 32, eps: float = 0.1
) -> tuple[Tensor, Tensor]:
    r = _tr._check_rank(rank)
    _tr._check_eps(eps)
    observed = _tr.transrate_comparable(features, labels, rank=r, eps=eps)
    # TransRate of the projected features (r × r class Grams) is the comparable score
    _, null = _features_null(
        ClassGramStatistics,
        _tr.transrate_from_statistics,
        features,
        labels,
        perms_fn,
        project=lambda x: _tr.comparable_features(x, r),
        eps=eps,
    )
    return observed, null


def _gbc_null(
    features: Any, labels: Any, perms_fn: Callable[[int], Tensor], *, pca_dim: int | None = None, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    observed = _gbc.gbc(features, labels, pca_dim=pca_dim, **kwargs)
    project = None if pca_dim is None else (lambda x: pca_scores(x, int(pca_dim))[0])
    _, null = _features_null(
        ClassVarianceStatistics, _gbc.gbc_from_statistics, features, labels, perms_fn, project=project, **kwargs
    )
    return observed, null


def _leep_null(source_probs: Any, labels: Any, perms_fn: Callable[[int], Tensor]) -> tuple[Tensor, Tensor]:
    theta = check_probs(source_probs, "source_probs")
    codes, _ = check_labels(labels, theta.shape[0], "labels", min_classes=2)
    codes = codes.to(theta.device)

    def score(y: Tensor) -> Tensor:
        return _leep.leep_from_joint(LEEPJointTable.from_samples(theta, y), theta, y)

    perms = perms_fn(theta.shape[0]).to(theta.device)
    return score(codes), torch.stack([score(codes[p]) for p in perms])


def _nce_null(source_labels: Any, labels: Any, perms_fn: Callable[[int], Tensor]) -> tuple[Tensor, Tensor]:
    y, _ = check_labels(labels, None, "labels", min_classes=2)
    z, _ = check_labels(source_labels, None, "source_labels", min_classes=1)
    check_same_length(z, y, "source_labels", "labels")
    z = z.to(y.device)
    stats = LabelPairCounts.from_samples(z, y)
    return _relabelled_scores(stats, z, y, perms_fn(y.shape[0]), _leep.nce_from_statistics)


def _otce_null(
    source_features: Any,
    source_labels: Any,
    target_features: Any,
    target_labels: Any,
    perms_fn: Callable[[int], Tensor],
    *,
    n_perm: int,
    seed: int = 0,
    sim: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    # otce(correction="null") solves OT once and re-tabulates W_T per permutation
    # (task_distance_null), drawing the permutations as label_permutations(Nt, n_perm, seed).
    if sim and "weights" in kwargs:
        raise ValueError("otce_sim takes no `weights`; use otce(..., weights=...) for the full score.")
    res = _otce.otce(
        source_features,
        source_labels,
        target_features,
        target_labels,
        correction="null",
        n_perm=n_perm,
        seed=seed,
        **kwargs,
    )
    assert res.null is not None  # correction="null" always sets it
    return res.null.score, res.null.null


def _fast_path(fn: Callable[..., Any], n_perm: int, seed: int) -> Callable[..., tuple[Tensor, Tensor]] | None:
    """The permutation-reusing implementation of a known metric function, else ``None``."""

    def features_null(kind: type[Statistics], score: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
        return lambda f, y, pf, **kw: _features_null(kind, score, f, y, pf, **kw)

    table: dict[Callable[..., Any], Callable[..., tuple[Tensor, Tensor]]] = {
        _hs.hscore: features_null(GramStatistics, _hs.hscore_from_statistics),
        _hs.hscore_shrinkage: features_null(GramStatistics, _hs.hscore_shrinkage_from_statistics),
        _logme.logme: features_null(GramStatistics, _logme.logme_from_statistics),
        _tr.transrate: features_null(ClassGramStatistics, _tr.transrate_from_statistics),
        _tr.transrate_comparable: _transrate_comparable_null,
        _gbc.gbc: _gbc_null,
        _leep.leep: _leep_null,
        _leep.nce: _nce_null,
        _otce.otce: lambda *a, **k: _otce_null(*a, n_perm=n_perm, seed=seed, **k),
        _otce.otce_sim: lambda *a, **k: _otce_null(*a, n_perm=n_perm, seed=seed, sim=True, **k),
    }
    return table.get(fn)


def label_shuffle_null(
    fn: Callable[..., Any], *args: Any, n_perm: int = 100, seed: int = 0, **kwargs: Any
) -> NullCalibrated:
    """Score ``fn(*args, **kwargs)`` and its null over ``n_perm`` shuffles of the target labels.

    ``fn`` is a metric function of :mod:`tguide.metrics` (``hscore``, ``hscore_shrinkage``,
    ``transrate``, ``transrate_comparable``, ``logme``, ``gbc``, ``leep``, ``nce``, ``otce``,
    ``otce_sim``: these reuse their label-independent work across permutations, see the module
    doc) or any callable whose **last positional argument is the target labels** and whose
    result is a number, a 0-d tensor or has a ``.score``. Permutations come from
    :func:`~tguide.metrics.functional.permutation.label_permutations` with ``seed`` (same
    seed → same null).

    Returns:
        :class:`NullCalibrated` with the score, the null's mean and std, ``z`` and the p-value.

    Example:
        >>> import torch
        >>> from tguide.metrics import hscore
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> f = torch.randn(200, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 8)
        >>> bool(label_shuffle_null(hscore, f, y, n_perm=50).z > 10)
        True
    """
    fn, args, kwargs = _unwrap_partial(fn, args, kwargs)
    args, kwargs = _labels_last(fn, args, kwargs)
    if not args:
        raise ValueError("label_shuffle_null needs the metric's arguments, the target labels last.")
    label_permutations(2, n_perm, seed)  # validates n_perm and seed before any work

    def perms_fn(n: int) -> Tensor:
        return label_permutations(n, n_perm, seed)

    fast = _fast_path(fn, n_perm, seed)
    if fast is None:
        _warn_slow_path(fn, n_perm)
    if fast is not None:
        score, null = fast(*args, perms_fn, **kwargs)
        return calibrate(score, null)

    def value(out: Any) -> Tensor:
        out = getattr(out, "score", out)
        return torch.as_tensor(out, dtype=torch.float64).detach().reshape(())

    *rest, labels = args
    y = torch.as_tensor(labels)
    if y.ndim == 0:
        raise ValueError("the last positional argument must be the target labels (N,).")
    perms = perms_fn(y.shape[0]).to(y.device)
    score = value(fn(*args, **kwargs))
    null = torch.stack([value(fn(*rest, y[p], **kwargs)) for p in perms])
    return calibrate(score, null)


_LABEL_NAMES = ("labels", "target_labels")
_warned: set[str] = set()


def _unwrap_partial(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``functools.partial(metric, **kw)`` → ``metric`` with ``kw`` merged (so the fast path applies)."""
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**(fn.keywords or {}), **kwargs}
        fn = fn.func
    return fn, args, kwargs


def _labels_last(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Move the target labels (and every argument before them) from keywords to positions."""
    name = next((n for n in _LABEL_NAMES if n in kwargs), None)
    if name is None:
        return args, kwargs
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if name not in names:  # an unknown callable: labels by keyword go last
        kwargs = dict(kwargs)
        return (*args, kwargs.pop(name)), kwargs
    upto = names[: names.index(name) + 1]
    kwargs = dict(kwargs)
    positional = list(args)
    for pname in upto[len(args) :]:
        if pname not in kwargs:
            raise TypeError(
                f"label_shuffle_null: `{pname}` is missing; pass the metric's arguments up to "
                f"`{name}` (the target labels)."
            )
        positional.append(kwargs.pop(pname))
    return tuple(positional), kwargs


def _warn_slow_path(fn: Callable[..., Any], n_perm: int) -> None:
    """Say once per function that the null recomputes the whole metric ``n_perm`` times."""
    key = getattr(fn, "__qualname__", repr(fn))
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"label_shuffle_null: no permutation-reusing path for {key}; the metric is recomputed "
        f"{n_perm} times (about {n_perm}x the cost of one score).",
        RuntimeWarning,
        stacklevel=3,
    )
