"""Sample-path torchmetrics classes: the score needs the samples themselves, not a fixed-size statistic.

* :class:`LEEP`: every sample's ``log Σ_z θ_iz P̂(y_i|z)`` with the *final* joint table
  ``P̂(y|z)`` (the table itself is a statistic, :class:`~tguide.metrics.statistics.LEEPJointTable`;
  the per-sample term is not).
* :class:`OTCE`: a coupling between the source and target samples.

Both keep their samples in ``cat`` list states (:class:`~tguide.metrics.stateful.base.FeatureMetric`,
``max_stored`` for a reservoir).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from tguide.metrics._validate import check_features, check_probs
from tguide.metrics.functional.leep import leep
from tguide.metrics.functional.ot_coupling import _check_solver_options
from tguide.metrics.functional.otce import OTCEResult, _check_weights, otce
from tguide.metrics.stateful.base import FeatureMetric, batch_labels, owned

__all__ = ["LEEP", "OTCE"]


class LEEP(FeatureMetric):
    """Stateful :func:`~tguide.metrics.functional.leep.leep` (Nguyen et al., ICML 2020).

    ``update(source_probs, labels)``. Sample path: LEEP's mean of per-sample log predictions
    under the final joint table needs every sample.
    """

    _fields: ClassVar[tuple[str, ...]] = ("source_probs", "labels")

    def update(self, source_probs: Any, labels: Any) -> None:
        """Add a batch: source-model probabilities ``(B, Cs)`` (rows sum to 1) and target labels ``(B,)``."""
        p = check_probs(source_probs, "source_probs").detach()
        y = batch_labels(labels, p.shape[0], "labels", p.device)
        self._store((owned(p, source_probs), y))

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return leep, self._samples(), {}


_DOMAINS = {"source": 0, "target": 1}


class OTCE(FeatureMetric):
    """Stateful :func:`~tguide.metrics.functional.otce.otce` (Tan et al., CVPR 2021).

    ``update(features, labels, domain="source"|"target")``: both domains' features of
    one layer go into one metric object; each row carries its domain tag (a ``domain``
    state), so a rank that saw any batch has every state. Sample path: OTCE needs the
    samples themselves (a coupling between them). ``compute()`` returns the score
    (``-W_T``, or ``λ1 W_D + λ2 W_T + λ3`` with ``weights``) as a 0-d tensor, so the object
    can be logged like any metric; :meth:`compute_result` returns the whole
    :class:`~tguide.metrics.functional.otce.OTCEResult` (score, W_D, W_T, coupling).
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

    def update(self, features: Any, labels: Any, domain: str) -> None:
        """Add a batch of one domain: ``features (B, D)``, ``labels (B,)``, ``domain`` "source" or "target"."""
        if domain not in _DOMAINS:
            raise ValueError(f"`domain` must be 'source' or 'target', got {domain!r}.")
        x = check_features(features, "features").detach()
        y = batch_labels(labels, x.shape[0], "labels", x.device)
        tag = torch.full((x.shape[0],), _DOMAINS[domain], dtype=torch.int64, device=x.device)
        self._store((owned(x, features), y, tag), group=_DOMAINS[domain])

    def _call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        x, y, tag = self._samples()
        src, tgt = tag == 0, tag == 1
        for name, mask in (("source", src), ("target", tgt)):
            if not bool(mask.any()):
                raise ValueError(
                    f"OTCE.compute(): no {name} samples were given; call update(features, labels, domain={name!r})."
                )
        kwargs = {
            "solver": self.solver,
            "reg": self.reg,
            "weights": self.weights,
            "max_iter": self.otce_max_iter,
            "tol": self.tol,
        }
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
