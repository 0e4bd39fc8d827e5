r"""OTCE-based fine-tuning (Tan et al., CVPR 2021, "OT-CE Score based Fine Tuning"; Tan, Li, Huang, CVPR 2021).

Step 1 (:func:`otce_pretune`): update the feature extractor :math:`\theta` so that the
source classes explain the target classes, i.e. minimise the task distance

.. math::
    \pi^*_\theta = \arg\min_{\pi \in \Pi(\frac1m \mathbf 1, \frac1n \mathbf 1)}
        \sum_{ij} \lVert \theta(x_s^i) - \theta(x_t^j) \rVert^2 \pi_{ij} + \varepsilon \sum_{ij} \pi_{ij}\log\pi_{ij},

    W_T(\theta) = H(Y_t \mid Y_s) = -\sum_{y_s, y_t} \hat P(y_s, y_t) \log \frac{\hat P(y_s, y_t)}{\hat P(y_s)},
    \qquad \hat P(y_s, y_t) = \sum_{i: y_s^i = y_s,\, j: y_t^j = y_t} \pi^*_{ij}

by gradient descent, the gradient flowing *through* the Sinkhorn iterations (a detached
coupling has no dependence on θ left in W_T, so its gradient would be zero). The coupling,
cost and W_T are those of :mod:`tguide.metrics.otce` (``ot.sinkhorn(method="sinkhorn_log")``
on the torch backend, :math:`\varepsilon = \mathrm{reg}\cdot\overline C`).

Step 2 (:func:`finetune`): replace the source head by a new target head and fine-tune
(θ, h_t) on the support set with cross-entropy.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from tguide.metrics._validate import check_labels
from tguide.metrics.otce import OTCEConvergenceWarning, otce_coupling, squared_euclidean, task_distance

NORMALISE = ("none", "l2")

__all__ = ["NORMALISE", "otce_task_loss", "otce_pretune", "otce_head", "finetune", "accuracy"]


def _normalise(f: Tensor, normalise: str) -> Tensor:
    if normalise == "l2":
        return torch.nn.functional.normalize(f, dim=1)
    return f


def otce_task_loss(
    src_features: Tensor,
    src_labels: Tensor,
    tgt_features: Tensor,
    tgt_labels: Tensor,
    *,
    reg: float = 0.1,
    max_iter: int = 200,
    normalise: str = "none",
) -> Tensor:
    r"""Differentiable :math:`W_T = H(Y_t \mid Y_s)` from the entropic coupling of the two feature sets.

    Args:
        src_features: ``(Ns, D)``; tgt_features: ``(Nt, D)`` (any float dtype; computed in float64).
        src_labels: ``(Ns,)``; tgt_labels: ``(Nt,)`` (any integers, remapped).
        reg: entropic strength relative to the mean cost.
        max_iter: Sinkhorn iterations (unrolled by autograd; the coupling need not have fully
            converged for a useful gradient, so the convergence warning is silenced).
        normalise: ``"none"`` or ``"l2"`` (unit-norm features before the cost).

    Returns:
        0-d float64 tensor with a gradient w.r.t. both feature sets.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"`normalise` must be one of {NORMALISE}, got {normalise!r}.")
    ys, cs = check_labels(src_labels, src_features.shape[0], "src_labels", min_classes=1)
    yt, ct = check_labels(tgt_labels, tgt_features.shape[0], "tgt_labels", min_classes=2)
    xs = _normalise(src_features.double(), normalise)  # (Ns, D)
    xt = _normalise(tgt_features.double(), normalise)  # (Nt, D)
    cost = squared_euclidean(xs, xt)  # (Ns, Nt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OTCEConvergenceWarning)
        plan = otce_coupling(cost, solver="sinkhorn", reg=reg, max_iter=max_iter, tol=1e-6)
    return task_distance(plan, ys.to(plan.device), cs, yt.to(plan.device), ct)


def otce_pretune(
    net: nn.Module,
    src_x: Tensor,
    src_y: Tensor,
    tgt_x: Tensor,
    tgt_y: Tensor,
    *,
    steps: int = 20,
    lr: float = 1e-3,
    reg: float = 0.1,
    src_batch: int = 128,
    normalise: str = "none",
    max_iter: int = 200,
    seed: int = 0,
) -> list[float]:
    r"""Step 1: ``steps`` Adam updates of ``net.embed``'s parameters minimising :func:`otce_task_loss`.

    Each step draws ``src_batch`` source images uniformly without replacement (seeded by
    ``seed``) and couples their features with those of all target shots. ``net`` is updated
    in place (train mode is not used: LeNet has no dropout or batch norm).

    Args:
        net: a module with ``embed(x) -> (B, D)`` (e.g. :class:`tguide.nets.lenet.LeNet5`).
        src_x: ``(Ms, C, H, W)`` source images, src_y ``(Ms,)``; tgt_x ``(Nt, C, H, W)``, tgt_y ``(Nt,)``.

    Returns:
        W_T before each step (``steps`` floats) followed by W_T after the last step.
    """
    if steps < 0 or src_batch < 2:
        raise ValueError(f"need steps ≥ 0 and src_batch ≥ 2, got steps={steps}, src_batch={src_batch}.")
    gen = torch.Generator().manual_seed(int(seed))
    params = [p for name, p in net.named_parameters() if not name.startswith("fc3") and p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    m = src_x.shape[0]
    for step in range(steps + 1):
        idx = torch.randperm(m, generator=gen)[: min(src_batch, m)].to(src_x.device)
        loss = otce_task_loss(net.embed(src_x[idx]), src_y[idx], net.embed(tgt_x), tgt_y,
                              reg=reg, max_iter=max_iter, normalise=normalise)
        history.append(float(loss.detach()))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return history


@torch.no_grad()
def otce_head(
    net: nn.Module, src_x: Tensor, src_y: Tensor, tgt_x: Tensor, tgt_y: Tensor, n_classes: int,
    *, reg: float = 0.1, max_iter: int = 200, normalise: str = "none",
) -> nn.Linear:
    r"""A target head initialised from the source head through the coupling's label map (our addition).

    With :math:`\hat P(y_s \mid y_t) = \hat P(y_s, y_t) / \sum_{y_s'} \hat P(y_s', y_t)` from the
    entropic coupling of ``net.embed(src_x)`` and ``net.embed(tgt_x)``, the target class ``t``
    gets the source head's rows mixed by that map:
    :math:`w_t = \sum_{y_s} \hat P(y_s \mid t)\, w^{src}_{y_s}`, :math:`b_t` likewise. Source labels
    must be indices of ``net.fc3``'s outputs; target labels ``0..n_classes-1``.
    """
    fs, ft = _normalise(net.embed(src_x).double(), normalise), _normalise(net.embed(tgt_x).double(), normalise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OTCEConvergenceWarning)
        plan = otce_coupling(squared_euclidean(fs, ft), solver="sinkhorn", reg=reg, max_iter=max_iter, tol=1e-6)
    cs = int(net.fc3.out_features)
    rows = torch.zeros(cs, plan.shape[1], dtype=plan.dtype).index_add(0, src_y.long(), plan)  # (Cs, Nt)
    joint = torch.zeros(cs, int(n_classes), dtype=plan.dtype).index_add(1, tgt_y.long(), rows)  # (Cs, Ct)
    cond = (joint / joint.sum(0, keepdim=True).clamp_min(1e-300)).T.float()  # (Ct, Cs): P̂(y_s | y_t)
    head = nn.Linear(net.fc3.in_features, int(n_classes)).to(tgt_x.device)
    head.weight.copy_(cond @ net.fc3.weight)
    head.bias.copy_(cond @ net.fc3.bias)
    return head


def finetune(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    freeze: Sequence[str] = (),
    new_head: bool = True,
    seed: int = 0,
) -> nn.Module:
    """Step 2: a copy of ``net`` with a fresh ``fc3`` head (``n_classes`` outputs), trained full-batch.

    Args:
        net: LeNet-like module with an ``fc3`` linear head (left unchanged; a copy is trained).
        x: ``(N, C, H, W)`` support images; y: ``(N,)`` labels in ``0..n_classes-1``.
        steps, lr, weight_decay: Adam on the full support batch, cross-entropy.
        freeze: parameter-name prefixes kept fixed (e.g. ``["conv1", "conv2"]``).
        new_head: replace ``fc3`` by a new layer initialised from ``seed`` (same head for
            every method of an episode, so that paired comparisons share it).
    """
    model = copy.deepcopy(net)
    if new_head:
        torch.manual_seed(int(seed))
        model.fc3 = nn.Linear(model.fc3.in_features, int(n_classes)).to(x.device)
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in freeze))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(int(steps)):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x``'s predictions ``argmax net(x)`` equal to ``y``."""
    net.eval()
    return float((net(x).argmax(1) == y).double().mean())
