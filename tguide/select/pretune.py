r"""OTCE-based fine-tuning (Tan, Li, Huang, CVPR 2021, "OT-CE Score based Fine Tuning"), for any backbone.

Step 1 (:func:`otce_pretune`): update the feature extractor :math:`\theta` (any network cut at a
layer, :class:`tguide.select.backbone.Backbone`, or a network with an ``embed`` method) so that
the source classes explain the target classes, i.e. minimise the task distance

.. math::
    \pi^*_\theta = \arg\min_{\pi \in \Pi(\frac1m \mathbf 1, \frac1n \mathbf 1)}
        \sum_{ij} \lVert \theta(x_s^i) - \theta(x_t^j) \rVert^2 \pi_{ij} + \varepsilon \sum_{ij} \pi_{ij}\log\pi_{ij},

    W_T(\theta) = H(Y_t \mid Y_s) = -\sum_{y_s, y_t} \hat P(y_s, y_t) \log \frac{\hat P(y_s, y_t)}{\hat P(y_s)},
    \qquad \hat P(y_s, y_t) = \sum_{i: y_s^i = y_s,\, j: y_t^j = y_t} \pi^*_{ij}

by gradient descent, the gradient flowing *through* the Sinkhorn iterations (a detached
coupling has no dependence on θ left in W_T, so its gradient would be zero). The coupling,
cost and W_T are those of :mod:`tguide.metrics.functional.otce`
(``ot.sinkhorn(method="sinkhorn_log")`` on the torch backend, :math:`\varepsilon = \mathrm{reg}\cdot\overline C`).

Step 2: replace the source head by a new target head and fine-tune (θ, h_t) on the target shots
with cross-entropy: :class:`tguide.select.finetune.FineTuner` (Lightning, ``pretune="otce"``
runs step 1 in ``on_fit_start``), or :func:`finetune` here (full-batch, LeNet-like nets with an
``fc3`` head; the few-shot study's step 2).

Old argument names (``src_x``, ``tgt_y``, ``src_features``, ``src_batch`` …) still work for one
release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from tguide.features import eval_mode, modules_entered
from tguide.metrics._validate import check_labels
from tguide.metrics.functional.otce import OTCEConvergenceWarning, otce_coupling, squared_euclidean, task_distance
from tguide.models.tensor_fit import fit_tensors

NORMALISE = ("none", "l2")

Trainable = str | Sequence[str] | Callable[[str, nn.Parameter], bool]

__all__ = [
    "NORMALISE",
    "accuracy",
    "feature_extractor",
    "finetune",
    "otce_head",
    "otce_pretune",
    "otce_task_loss",
    "trainable_parameters",
]


def _normalise(f: Tensor, normalise: str) -> Tensor:
    if normalise == "l2":
        return torch.nn.functional.normalize(f, dim=1)
    return f


# ----------------------------------------------------------------------------- the loss


def otce_task_loss(
    source_features: Tensor,
    source_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    *,
    reg: float = 0.1,
    max_iter: int = 200,
    normalise: str = "none",
) -> Tensor:
    r"""Differentiable :math:`W_T = H(Y_t \mid Y_s)` from the entropic coupling of the two feature sets.

    Args:
        source_features: ``(Ns, D)``; target_features: ``(Nt, D)`` (any float dtype; computed in float64).
        source_labels: ``(Ns,)``; target_labels: ``(Nt,)`` (any integers, remapped).
        reg: entropic strength relative to the mean cost.
        max_iter: Sinkhorn iterations (unrolled by autograd; the coupling need not have fully
            converged for a useful gradient, so the convergence warning is silenced).
        normalise: ``"none"`` or ``"l2"`` (unit-norm features before the cost).

    Returns:
        0-d float64 tensor with a gradient w.r.t. both feature sets.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"`normalise` must be one of {NORMALISE}, got {normalise!r}.")
    ys, cs = check_labels(source_labels, source_features.shape[0], "source_labels", min_classes=1)
    yt, ct = check_labels(target_labels, target_features.shape[0], "target_labels", min_classes=2)
    xs = _normalise(source_features.double(), normalise)  # (Ns, D)
    xt = _normalise(target_features.double(), normalise)  # (Nt, D)
    cost = squared_euclidean(xs, xt)  # (Ns, Nt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OTCEConvergenceWarning)
        plan = otce_coupling(cost, solver="sinkhorn", reg=reg, max_iter=max_iter, tol=1e-6)
    return task_distance(plan, ys.to(plan.device), cs, yt.to(plan.device), ct)


# ----------------------------------------------------------------------------- backbones


class _HasEmbed(Protocol):
    def embed(self, x: Tensor) -> Tensor: ...


class _Embed(nn.Module):
    """``net.embed`` as a module (the network is held as ``net``, so names are ``net.<name>``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        # feature_extractor wraps only networks with a callable `embed`; nn.Module's attribute
        # typing (Tensor | Module) cannot say so
        return cast(_HasEmbed, self.net).embed(x)


def feature_extractor(backbone: nn.Module) -> nn.Module:
    """The module whose forward gives the features that step 1 moves.

    A :class:`~tguide.select.backbone.Backbone` (or any module without ``embed``) is used as it
    is; a network with an ``embed(x) -> (B, D)`` method (LeNet-5, the zoo nets) is wrapped so that
    its embedding is used and its head never runs.
    """
    from tguide.select.backbone import Backbone

    if isinstance(backbone, Backbone) or not callable(getattr(backbone, "embed", None)):
        return backbone
    return _Embed(backbone)


def _parameters_used(module: nn.Module, x: Tensor) -> set[int]:
    """ids of the parameters owned by the modules that a forward pass on ``x`` enters (eval, no grad)."""
    with modules_entered(module) as ran, eval_mode(module), torch.no_grad():
        module(x)
    return {id(p) for m in ran for p in m.parameters(recurse=False)}


def trainable_parameters(
    module: nn.Module, trainable: Trainable = "all", *, used: set[int] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs that step 1 updates, among those with ``requires_grad``
    (and, if ``used`` is given, whose ``id`` is in it: the parameters the forward pass reaches).

    Args:
        trainable: ``"all"``; ``"last:K"`` — the parameters of the last ``K`` modules (in
            ``named_modules()`` order, i.e. registration order, which for the nets here is the
            forward order) that own trainable parameters; a sequence of name prefixes; or a
            callable ``(name, parameter) -> bool``.

    Raises:
        ValueError: an unknown string, ``K < 1``, or a choice that selects no parameter.
    """
    pairs = [(n, p) for n, p in module.named_parameters() if p.requires_grad and (used is None or id(p) in used)]
    if callable(trainable):
        chosen = [(n, p) for n, p in pairs if trainable(n, p)]
    elif isinstance(trainable, str) and trainable == "all":
        chosen = pairs
    elif isinstance(trainable, str) and trainable.startswith("last:"):
        try:
            k = int(trainable.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"`trainable`={trainable!r}: K in 'last:K' must be a positive integer.")
        kept = {id(p) for _, p in pairs}
        owners = [name for name, m in module.named_modules() if any(id(p) in kept for p in m.parameters(recurse=False))]
        keep = set(owners[-k:])
        chosen = [(n, p) for n, p in pairs if n.rpartition(".")[0] in keep]
    elif not isinstance(trainable, str) and isinstance(trainable, Sequence):
        prefixes = tuple(str(t) for t in trainable)
        chosen = [(n, p) for n, p in pairs if n.startswith(prefixes)]
    else:
        raise ValueError(
            f"`trainable` must be 'all', 'last:K', a list of name prefixes or a callable, got {trainable!r}."
        )
    if not chosen:
        raise ValueError(f"`trainable`={trainable!r} selects no trainable parameter of {type(module).__name__}.")
    return chosen


def _device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# ----------------------------------------------------------------------------- step 1


def otce_pretune(
    backbone: nn.Module,
    source_x: Tensor,
    source_y: Tensor,
    target_x: Tensor,
    target_y: Tensor,
    *,
    steps: int = 20,
    lr: float = 1e-3,
    reg: float = 0.1,
    batch: int = 128,
    normalise: str = "none",
    trainable: Trainable = "all",
    max_iter: int = 200,
    target_batch: int | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    r"""Step 1: ``steps`` Adam updates of the extractor's parameters minimising :func:`otce_task_loss`.

    Each step draws ``batch`` source samples uniformly without replacement (seeded by ``seed``)
    and couples their features with those of the target shots (all of them, or ``target_batch``
    drawn the same way). The extractor runs in eval mode (BatchNorm uses its running statistics
    and does not update them; dropout is off), so that the features moved are the features a
    transferability score measured; modes are restored afterwards. ``backbone`` is updated in
    place; the inputs stay where they are and each batch is moved to the backbone's device.

    Args:
        backbone: a :class:`~tguide.select.backbone.Backbone` (a network cut at a layer), any
            module ``x -> (B, D)``, or a network with ``embed(x) -> (B, D)`` (LeNet-5: its
            ``fc3`` head gets no gradient and is left unchanged).
        source_x: ``(Ms, ...)`` source inputs, source_y ``(Ms,)`` their labels.
        target_x: ``(Nt, ...)`` the labelled target shots, target_y ``(Nt,)`` (≥ 2 classes).
        steps, lr, weight_decay: Adam (``AdamW`` when ``weight_decay > 0``).
        reg, max_iter, normalise: the coupling, see :func:`otce_task_loss`.
        batch: source samples per step (≥ 2).
        trainable: which parameters move, see :func:`trainable_parameters`.
        target_batch: target shots per step (``None`` = all).
        seed: seeds the batch draws.

    Returns:
        W_T before each step (``steps`` floats) followed by W_T after the last step.
    """
    if steps < 0 or batch < 2:
        raise ValueError(f"need steps ≥ 0 and batch ≥ 2 (source samples per step), got steps={steps}, batch={batch}.")
    if target_batch is not None and target_batch < 2:
        raise ValueError(f"`target_batch` must be None or ≥ 2, got {target_batch}.")
    if source_x.shape[0] != source_y.shape[0] or target_x.shape[0] != target_y.shape[0]:
        raise ValueError(
            f"source_x has {source_x.shape[0]} rows for {source_y.shape[0]} source_y, target_x "
            f"{target_x.shape[0]} for {target_y.shape[0]} target_y; pass one label per sample."
        )
    extractor = feature_extractor(backbone)
    used = _parameters_used(extractor, source_x[:2].to(_device(extractor)))
    params = [p for _, p in trainable_parameters(extractor, trainable, used=used)]
    opt = (
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if weight_decay > 0
        else torch.optim.Adam(params, lr=lr)
    )
    device = _device(extractor)
    gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    m, n = source_x.shape[0], target_x.shape[0]
    with eval_mode(extractor):
        for step in range(steps + 1):
            idx = torch.randperm(m, generator=gen)[: min(batch, m)]
            xs, ys = source_x[idx.to(source_x.device)].to(device), source_y[idx.to(source_y.device)]
            if target_batch is None or target_batch >= n:
                xt, yt = target_x.to(device), target_y
            else:
                jdx = torch.randperm(n, generator=gen)[:target_batch]
                xt, yt = target_x[jdx.to(target_x.device)].to(device), target_y[jdx.to(target_y.device)]
            loss = otce_task_loss(
                extractor(xs),
                ys.to(device),
                extractor(xt),
                yt.to(device),
                reg=reg,
                max_iter=max_iter,
                normalise=normalise,
            )
            history.append(float(loss.detach()))
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return history


@torch.no_grad()
def otce_head(
    backbone: nn.Module,
    source_x: Tensor,
    source_y: Tensor,
    target_x: Tensor,
    target_y: Tensor,
    num_classes: int,
    *,
    source_head: nn.Linear | None = None,
    reg: float = 0.1,
    max_iter: int = 200,
    normalise: str = "none",
) -> nn.Linear:
    r"""A target head initialised from the source head through the coupling's label map (our addition).

    With :math:`\hat P(y_s \mid y_t) = \hat P(y_s, y_t) / \sum_{y_s'} \hat P(y_s', y_t)` from the
    entropic coupling of the source and target features, the target class ``t`` gets the source
    head's rows mixed by that map: :math:`w_t = \sum_{y_s} \hat P(y_s \mid t)\, w^{src}_{y_s}`,
    :math:`b_t` likewise. The features must be the head's inputs (the penultimate layer).

    Args:
        backbone: as in :func:`otce_pretune`.
        source_head: the source classifier ``nn.Linear(D, Cs)``; default ``backbone.fc3`` (LeNet-5).
        source_y: indices of the source head's outputs; target_y: ``0..num_classes-1``.
    """
    head_src = source_head if source_head is not None else getattr(backbone, "fc3", None)
    if not isinstance(head_src, nn.Linear):
        raise ValueError("otce_head needs the source head: pass source_head=nn.Linear(D, Cs) (no `fc3` found).")
    extractor = feature_extractor(backbone)
    device = _device(extractor)
    with eval_mode(extractor):
        fs = _normalise(extractor(source_x.to(device)).double(), normalise)
        ft = _normalise(extractor(target_x.to(device)).double(), normalise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OTCEConvergenceWarning)
        plan = otce_coupling(squared_euclidean(fs, ft), solver="sinkhorn", reg=reg, max_iter=max_iter, tol=1e-6)
    cs = int(head_src.out_features)
    rows = torch.zeros(cs, plan.shape[1], dtype=plan.dtype, device=plan.device).index_add(
        0, source_y.long().to(plan.device), plan
    )  # (Cs, Nt)
    joint = torch.zeros(cs, int(num_classes), dtype=plan.dtype, device=plan.device).index_add(
        1, target_y.long().to(plan.device), rows
    )  # (Cs, Ct)
    cond = (joint / joint.sum(0, keepdim=True).clamp_min(1e-300)).T.to(head_src.weight.dtype)  # (Ct, Cs)
    head = nn.Linear(head_src.in_features, int(num_classes)).to(head_src.weight.device)
    head.weight.copy_(cond @ head_src.weight)
    head.bias.copy_(cond @ head_src.bias)
    return head


# ----------------------------------------------------------------------------- step 2 (full batch)


def finetune(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    freeze: Sequence[str] = (),
    new_head: bool = True,
    head: str = "fc3",
    seed: int = 0,
) -> nn.Module:
    """Step 2, full batch: a copy of ``net`` with a fresh ``head`` layer (``num_classes`` outputs), trained.

    Args:
        net: a network with a linear head attribute ``head`` (LeNet-5: ``fc3``); left unchanged.
        x: ``(N, C, H, W)`` support images; y: ``(N,)`` labels in ``0..num_classes-1``.
        steps, lr, weight_decay: Adam on the full support batch, cross-entropy.
        freeze: parameter-name prefixes kept fixed (e.g. ``["conv1", "conv2"]``).
        new_head: replace the head by a new layer initialised from ``seed`` (same head for
            every method of an episode, so that paired comparisons share it).
    """
    model = copy.deepcopy(net)
    if new_head:
        torch.manual_seed(int(seed))
        old = getattr(model, head)
        setattr(model, head, nn.Linear(old.in_features, int(num_classes)).to(x.device))
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in freeze))
    fit_tensors(model, x, y, lr=lr, steps=int(steps), optimizer="adam", weight_decay=weight_decay, seed=seed)
    model.eval()
    return model


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x``'s predictions ``argmax net(x)`` equal to ``y``."""
    net.eval()
    return float((net(x).argmax(1) == y).double().mean())
