r"""Label-shuffle nulls: is a transferability score better than chance on *these* samples?

:func:`label_shuffle_null` scores a metric on the real target labels and on ``n_perm``
shuffles of them, and returns a :class:`~tguide.metrics.functional.permutation.NullCalibrated`:
the null's mean and spread, ``z = (score − μ₀)/σ₀`` (puts scores of different metrics, widths
and class counts on one scale), the one-sided permutation p-value and the bias-corrected
``score − μ₀`` (the same arithmetic as ``correction="null"`` of
:func:`~tguide.metrics.functional.otce.otce` and :func:`~tguide.metrics.functional.leep.nce`;
see :mod:`tguide.metrics.functional.permutation` for the formulas).

Cheap by construction: every metric here has a part that depends on the features only,
computed once, and a part that depends on the labels, recomputed per permutation:

- OTCE / OTCE_sim: the coupling (one OT solve); each permutation re-tabulates P̂(y_s, y_t)
  (:func:`~tguide.metrics.functional.task_distance.task_distance_null`).
- H-score and shrinkage H-score: one eigendecomposition; the score is
  ``Σ_k w_k Σ_c (Σ_{i∈c} u_ik)² / n_c`` over the unit eigenvectors ``u_k`` in sample space
  (``w_k = 1``, resp. ``(1-α)λ_k / ((1-α)λ_k + α tr S/D)``), one ``index_add`` per permutation.
- LogME: one eigendecomposition for the one-hot columns of all permutations at once.
- TransRate: the global coding rate once; class coding rates per permutation.
- LEEP / NCE: one joint table per permutation from the fixed source predictions.

Any other callable works too (the target labels must be its last positional argument); it is
then simply called ``P + 1`` times.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from tguide.metrics._validate import check_features, check_labels, check_probs, check_same_length
from tguide.metrics.functional import hscore as _hs
from tguide.metrics.functional import leep as _leep
from tguide.metrics.functional import logme as _logme
from tguide.metrics.functional import otce as _otce
from tguide.metrics.functional import transrate as _tr
from tguide.metrics.functional.permutation import NullCalibrated, calibrate, label_permutations

__all__ = ["NullCalibrated", "label_shuffle_null"]


# ----------------------------------------------------------------------------- fast paths


def _weighted_class_energy(u: Tensor, w: Tensor, codes: Tensor, counts: Tensor, c: int, perms: Tensor) -> Tensor:
    """``Σ_k w_k Σ_c (Σ_{i: y_i = c} u_ik)² / n_c`` for the labels of every permutation: ``(P,)``."""
    out = torch.empty(perms.shape[0], dtype=u.dtype, device=u.device)
    for p in range(perms.shape[0]):
        sums = torch.zeros(c, u.shape[1], dtype=u.dtype, device=u.device).index_add_(0, codes[perms[p]], u)
        out[p] = ((sums**2 / counts[:, None]).sum(dim=0) * w).sum()
    return out


def _hscore_null(features: Any, labels: Any, perms_fn: Callable[[int], Tensor], shrink: bool) -> tuple[Tensor, Tensor]:
    z, codes, counts, c = _hs._prepare(features, labels)
    n, d = z.shape
    score = _hs.hscore_shrinkage(z, codes) if shrink else _hs.hscore(z, codes)
    gram = _hs._gram(z)
    lam, vecs = torch.linalg.eigh(gram / n)
    lam = lam.clamp_min(0)
    keep = lam > _hs._rank_cut(lam, n, d)
    if n >= d:  # u_k = Z v_k / sqrt(N λ_k), unit vectors in sample space
        u = (z @ vecs[:, keep]) / torch.sqrt(n * lam[keep])[None, :]
    else:
        u = vecs[:, keep]
    if shrink:
        alpha = _hs.ledoit_wolf_shrinkage(z, gram)
        shrunk = (1 - alpha) * lam + alpha * lam.sum() / d
        w = ((1 - alpha) * lam / shrunk)[keep]
    else:
        w = torch.ones(int(keep.sum()), dtype=z.dtype, device=z.device)
    return score, _weighted_class_energy(u, w, codes, counts, c, perms_fn(n).to(z.device))


def _transrate_null(x: Tensor, codes: Tensor, c: int, eps: float, perms: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    score = _tr._transrate(x, codes, c, eps)
    z = x - x.mean(dim=0, keepdim=True)
    whole = _tr.coding_rate(z, eps)
    d = x.shape[1]
    counts = torch.bincount(codes, minlength=c).tolist()
    # classes smaller than D take the n_c × n_c route: cut their Gram out of one N × N Gram
    sample_gram = z @ z.T if n <= 4096 and min(counts) < d else None
    out = torch.empty(perms.shape[0], dtype=x.dtype, device=x.device)
    for p in range(perms.shape[0]):
        shuffled = codes[perms[p]]
        cond = torch.zeros((), dtype=x.dtype, device=x.device)
        for k, nc in enumerate(counts):
            idx = torch.nonzero(shuffled == k).flatten()
            if sample_gram is not None and nc < d:
                rate = _tr._half_logdet_eye_plus(sample_gram[idx][:, idx], 1.0 / (nc * eps))
            else:
                rate = _tr.coding_rate(z[idx], eps)
            cond = cond + (nc / n) * rate
        out[p] = whole - cond
    return score, out


def _logme_null(features: Any, labels: Any, perms_fn: Callable[[int], Tensor], tol: float = 1e-7,
                max_iter: int = 10_000) -> tuple[Tensor, Tensor]:
    _logme._check_options(tol, max_iter)
    f = check_features(features, "features")
    codes, c = check_labels(labels, f.shape[0], "labels", min_classes=2)
    codes = codes.to(f.device)
    perms = perms_fn(f.shape[0]).to(f.device)
    all_codes = torch.cat([codes[None, :], codes[perms]])  # (P + 1, N)
    y = torch.nn.functional.one_hot(all_codes.T, c).to(f.dtype).reshape(f.shape[0], -1)  # (N, (P+1)·C)
    per_column = _logme.logme_columns(f, y, tol, max_iter).view(-1, c).mean(dim=1)  # (P + 1,)
    return per_column[0], per_column[1:]


def _leep_null(source_probs: Any, labels: Any, perms_fn: Callable[[int], Tensor]) -> tuple[Tensor, Tensor]:
    theta = check_probs(source_probs, "source_probs")
    codes, c = check_labels(labels, theta.shape[0], "labels", min_classes=2)
    codes = codes.to(theta.device)
    perms = perms_fn(theta.shape[0]).to(theta.device)
    return _leep.leep_table(theta, codes[None, :], c)[0], _leep.leep_table(theta, codes[perms], c)


def _nce_null(source_labels: Any, labels: Any, perms_fn: Callable[[int], Tensor]) -> tuple[Tensor, Tensor]:
    y, c = check_labels(labels, None, "labels", min_classes=2)
    z, cz = check_labels(source_labels, None, "source_labels", min_classes=1)
    check_same_length(z, y, "source_labels", "labels")
    z = z.to(y.device)
    perms = perms_fn(y.shape[0]).to(y.device)
    return _leep.nce_table(z, cz, y[None, :], c)[0], _leep.nce_table(z, cz, y[perms], c)


def _otce_null(source_features: Any, source_labels: Any, target_features: Any, target_labels: Any,
               perms_fn: Callable[[int], Tensor], *, n_perm: int, seed: int = 0, sim: bool = False,
               **kwargs: Any) -> tuple[Tensor, Tensor]:
    # otce(correction="null") solves OT once and re-tabulates W_T per permutation
    # (task_distance_null), drawing the permutations as label_permutations(Nt, n_perm, seed).
    if sim and "weights" in kwargs:
        raise ValueError("otce_sim takes no `weights`; use otce(..., weights=...) for the full score.")
    res = _otce.otce(source_features, source_labels, target_features, target_labels, correction="null",
                     n_perm=n_perm, seed=seed, **kwargs)
    return res.null.score, res.null.null


def _fast_path(fn: Callable[..., Any], n_perm: int, seed: int) -> Callable[..., tuple[Tensor, Tensor]] | None:
    """The permutation-reusing implementation of a known metric function, else ``None``."""
    def transrate(features: Any, labels: Any, perms_fn: Callable[[int], Tensor], eps: float = 1e-4) -> tuple[Tensor, Tensor]:
        x, codes, c = _tr._prepare(features, labels, eps)
        return _transrate_null(x, codes, c, float(eps), perms_fn(x.shape[0]).to(x.device))

    def transrate_comparable(features: Any, labels: Any, perms_fn: Callable[[int], Tensor], rank: int = 32,
                             eps: float = 0.1) -> tuple[Tensor, Tensor]:
        r = _tr._check_rank(rank)
        x, codes, c = _tr._prepare(features, labels, eps)
        xc = _tr.comparable_features(x, r)
        return _transrate_null(xc, codes, c, float(eps), perms_fn(x.shape[0]).to(x.device))

    table: dict[Callable[..., Any], Callable[..., tuple[Tensor, Tensor]]] = {
        _hs.hscore: lambda f, y, pf: _hscore_null(f, y, pf, shrink=False),
        _hs.hscore_shrinkage: lambda f, y, pf: _hscore_null(f, y, pf, shrink=True),
        _tr.transrate: transrate,
        _tr.transrate_comparable: transrate_comparable,
        _logme.logme: _logme_null,
        _leep.leep: _leep_null,
        _leep.nce: _nce_null,
        _otce.otce: lambda *a, **k: _otce_null(*a, n_perm=n_perm, seed=seed, **k),
        _otce.otce_sim: lambda *a, **k: _otce_null(*a, n_perm=n_perm, seed=seed, sim=True, **k),
    }
    return table.get(fn)


def label_shuffle_null(fn: Callable[..., Any], *args: Any, n_perm: int = 100, seed: int = 0,
                       **kwargs: Any) -> NullCalibrated:
    """Score ``fn(*args, **kwargs)`` and its null over ``n_perm`` shuffles of the target labels.

    ``fn`` is a metric function of :mod:`tguide.metrics` (``hscore``, ``hscore_shrinkage``,
    ``transrate``, ``transrate_comparable``, ``logme``, ``leep``, ``nce``, ``otce``,
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


def _unwrap_partial(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``functools.partial(metric, **kw)`` → ``metric`` with ``kw`` merged (so the fast path applies)."""
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**(fn.keywords or {}), **kwargs}
        fn = fn.func
    return fn, args, kwargs


def _labels_last(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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
    upto = names[:names.index(name) + 1]
    kwargs = dict(kwargs)
    positional = list(args)
    for pname in upto[len(args):]:
        if pname not in kwargs:
            raise TypeError(f"label_shuffle_null: `{pname}` is missing; pass the metric's arguments up to "
                            f"`{name}` (the target labels).")
        positional.append(kwargs.pop(pname))
    return tuple(positional), kwargs


def _warn_slow_path(fn: Callable[..., Any], n_perm: int) -> None:
    """Say once per function that the null recomputes the whole metric ``n_perm`` times."""
    key = getattr(fn, "__qualname__", repr(fn))
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"label_shuffle_null: no permutation-reusing path for {key}; the metric is recomputed "
                  f"{n_perm} times (about {n_perm}x the cost of one score).", RuntimeWarning, stacklevel=3)

