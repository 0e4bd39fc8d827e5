r"""Invariance of a classifier to a nuisance transformation: eKLD (Zhou, Tajwar & Finn, ICLR 2022).

For a classifier :math:`\hat P_w(y\mid x)` and a nuisance transformation distribution
:math:`T(\cdot\mid x)`, the expected KL divergence

.. math::
    \mathrm{eKLD} = \mathbb{E}_{x}\,\mathbb{E}_{x'\sim T(\cdot\mid x)}
        \Big[\sum_j \hat P_w(j\mid x)\,\log\frac{\hat P_w(j\mid x)}{\hat P_w(j\mid x')}\Big]

is 0 for a model whose predictions do not change under the nuisance and grows as they do.
It is **not** a transferability score: lower is more invariant, and it is deliberately not
exported from :mod:`tguide.metrics`, so that nobody ranks models with it by mistake.
The per-class eKLD averages over the examples of one class :math:`y`; the paper plots it
against the class's training-set size.

Here a sample is a pair of logits rows ``(logits[i], transformed_logits[i])`` of the same input
before and after a random transformation. Probabilities are never formed first: the KL is computed from
``log_softmax`` in float64, :math:`\sum_j e^{a_j}(a_j - b_j)` with :math:`a, b` the two
log-probability rows, which stays finite for logits of any size (``p = 0`` gives a zero term).

Functional: :func:`kl_rows`, :func:`ekld`, :func:`ekld_per_class`. Stateful: :class:`EKLD`
(torchmetrics; per-class sums and counts with ``dist_reduce_fx="sum"``, so DDP reduction is a sum
and memory is O(C) whatever the number of samples).

Reference: A. Zhou, F. Tajwar, A. Robey, T. Knowles, G. J. Pappas, H. Hassani, C. Finn,
"Do Deep Networks Transfer Invariances Across Classes?", ICLR 2022, arXiv:2203.09739.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from tguide.metrics._validate import _check_finite, as_tensor

__all__ = ["kl_rows", "ekld", "ekld_per_class", "EKLD"]


def _check_logits(logits: Any, transformed_logits: Any) -> tuple[Tensor, Tensor]:
    a = as_tensor(logits, "logits")
    b = as_tensor(transformed_logits, "transformed_logits")
    for name, t in (("logits", a), ("transformed_logits", b)):
        if t.ndim != 2:
            raise ValueError(
                f"`{name}` must be 2-D (N, C) logits, got shape {tuple(t.shape)}; for one sample use t[None]."
            )
        if t.shape[0] == 0:
            raise ValueError(f"`{name}` is empty; pass at least one sample.")
        if t.shape[1] < 2:
            raise ValueError(f"`{name}` has {t.shape[1]} class column(s); a classifier needs at least 2.")
        if not t.is_floating_point():
            raise ValueError(f"`{name}` must be floating point logits, got {t.dtype}.")
        _check_finite(t, name)
    if a.shape != b.shape:
        raise ValueError(
            f"`logits` {tuple(a.shape)} and `transformed_logits` {tuple(b.shape)} must have the "
            "same shape: row i of each is the same input before and after the transformation."
        )
    return a.to(torch.float64), b.to(torch.float64)


def kl_rows(logits: Any, transformed_logits: Any) -> Tensor:
    r"""Per-sample :math:`\mathrm{KL}(\mathrm{softmax}(a_i)\,\|\,\mathrm{softmax}(b_i))`, ``(N,)`` float64.

    ``logits (N, C)``: logits of the inputs; ``transformed_logits (N, C)``: logits of their
    transformed versions. Computed from log-softmax (stable for any finite logits); tiny negative rounding
    is clipped at 0.
    """
    a, b = _check_logits(logits, transformed_logits)
    log_p = torch.log_softmax(a, dim=1)
    log_q = torch.log_softmax(b, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).clamp_min(0.0)


def ekld(logits: Any, transformed_logits: Any) -> Tensor:
    r"""eKLD: the mean over samples of :math:`\mathrm{KL}(\hat P(\cdot\mid x)\,\|\,\hat P(\cdot\mid T(x)))`.

    Args:
        logits: ``(N, C)`` logits of inputs ``x``.
        transformed_logits: ``(N, C)`` logits of ``T(x)`` (row ``i`` transforms input ``i``).

    Returns:
        0-d float64 tensor, in nats; 0 iff every row's predicted distribution is unchanged.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> float(ekld(a, a))
        0.0
    """
    return kl_rows(logits, transformed_logits).mean()


def ekld_per_class(logits: Any, transformed_logits: Any, labels: Any, num_classes: int) -> Tensor:
    """Per-class eKLD ``(num_classes,)`` float64: the mean KL over the samples of each class
    (``labels (N,)`` in ``0..num_classes-1``); ``nan`` for a class with no sample."""
    kl = kl_rows(logits, transformed_logits)
    y = _check_class_labels(labels, kl.shape[0], num_classes).to(kl.device)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=kl.device).index_add_(0, y, kl)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


def _check_class_labels(labels: Any, n: int, num_classes: int) -> Tensor:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer ≥ 2, got {num_classes!r}.")
    y = as_tensor(labels, "labels")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"`labels` must be integer class ids, got {y.dtype}.")
    y = y.reshape(-1).long()
    if y.numel() != n:
        raise ValueError(f"`labels` has {y.numel()} entries but the logits have {n} rows.")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"`labels` must lie in 0..{num_classes - 1}, got values in "
            f"[{int(y.min())}, {int(y.max())}]; remap them or raise num_classes."
        )
    return y


class EKLD(Metric):
    r"""Streaming eKLD: per-class KL sums and counts, summed across batches and DDP ranks.

    ``update(logits, transformed_logits, labels=None)``; ``compute()`` returns

    - ``average="micro"``: the mean KL over all samples (:func:`ekld` of everything seen);
    - ``average="macro"``: the mean of the per-class eKLDs over the classes seen;
    - ``average="none"``: the per-class eKLD ``(num_classes,)`` (``nan`` for unseen classes).

    ``labels`` may be omitted for ``micro`` (all samples go to class 0). Lower is more invariant.

    Args:
        num_classes: number of classes (size of the per-class states).
        average: ``"micro"``, ``"macro"`` or ``"none"``.
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    # states registered by ``add_state`` in ``__init__``: per-class sums, (num_classes,) float64
    kl_sum: Tensor
    count: Tensor

    def __init__(self, num_classes: int, average: str = "micro", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if average not in ("micro", "macro", "none"):
            raise ValueError(f"`average` must be 'micro', 'macro' or 'none', got {average!r}.")
        _check_class_labels(torch.zeros(0, dtype=torch.long), 0, num_classes)
        self.num_classes, self.average = int(num_classes), average
        self.add_state("kl_sum", default=torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, transformed_logits: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch: ``logits (B, C)``, ``transformed_logits (B, C)`` and optional ``labels (B,)``."""
        kl = kl_rows(logits, transformed_logits).to(self.kl_sum.device)
        if labels is None:
            if self.average != "micro":
                raise ValueError(f"`labels` are needed for average={self.average!r}.")
            y = torch.zeros(kl.shape[0], dtype=torch.long, device=kl.device)
        else:
            y = _check_class_labels(labels, kl.shape[0], self.num_classes).to(kl.device)
        self.kl_sum.index_add_(0, y, kl)
        self.count += torch.bincount(y, minlength=self.num_classes).to(torch.float64)

    def compute(self) -> Tensor:
        total = self.count.sum()
        if total == 0:
            raise ValueError("EKLD.compute() before any update: feed at least one batch.")
        per_class = torch.where(
            self.count > 0, self.kl_sum / self.count.clamp_min(1), torch.full_like(self.kl_sum, float("nan"))
        )
        if self.average == "micro":
            return self.kl_sum.sum() / total
        if self.average == "macro":
            return per_class[self.count > 0].mean()
        return per_class
